"""Open Inference Protocol (KServe v2) REST: JSON tensors, the binary-tensor extension, and
Triton's own HTTP client talking to the service unchanged."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from tests.service.conftest import random_batch

RTOL, ATOL = 1e-4, 1e-5


def infer_url(server, name="tiny") -> str:
    return f"{server.url}/v2/models/{name}/infer"


def test_server_and_model_metadata(server):
    meta = httpx.get(server.url + "/v2").json()
    assert meta["name"] == "gemmserve" and "binary_tensor_data" in meta["extensions"]
    assert httpx.get(server.url + "/v2/health/live").status_code == 200
    assert httpx.get(server.url + "/v2/health/ready").status_code == 200
    model = httpx.get(server.url + "/v2/models/tiny").json()
    assert model["name"] == "tiny"
    assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3, 16, 16]}]
    assert model["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert httpx.get(server.url + "/v2/models/tiny/versions/1").json() == model
    assert httpx.get(server.url + "/v2/models/tiny/ready").status_code == 200
    missing = httpx.get(server.url + "/v2/models/other/ready")
    assert missing.status_code == 404 and isinstance(missing.json()["error"], str)


def test_json_tensors(server, reference):
    x = random_batch(3, seed=200)
    request = {
        "id": "r-1",
        "inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}],
    }
    answer = httpx.post(infer_url(server), json=request).json()
    assert answer["id"] == "r-1" and answer["model_name"] == "tiny"
    (output,) = answer["outputs"]
    assert output["name"] == "logits" and output["shape"] == [3, 10]
    got = np.array(output["data"], np.float32).reshape(3, 10)
    np.testing.assert_allclose(got, reference(x), rtol=RTOL, atol=ATOL)


def test_binary_tensors_both_ways(server, reference):
    x = random_batch(2, seed=201)
    header = {
        "inputs": [
            {
                "name": "x",
                "shape": list(x.shape),
                "datatype": "FP32",
                "parameters": {"binary_data_size": x.nbytes},
            }
        ],
        "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
    }
    head = json.dumps(header).encode()
    response = httpx.post(
        infer_url(server),
        content=head + x.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert response.status_code == 200, response.text
    length = int(response.headers["Inference-Header-Content-Length"])
    answer = json.loads(response.content[:length])
    assert answer["outputs"][0]["parameters"]["binary_data_size"] == 2 * 10 * 4
    got = np.frombuffer(response.content[length:], "<f4").reshape(2, 10)
    np.testing.assert_allclose(got, reference(x), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    ("mutate", "status"),
    [
        (lambda r: r["inputs"][0].update(name="y"), 400),
        (lambda r: r["inputs"][0].update(datatype="INT32"), 422),
        (lambda r: r["inputs"][0].update(shape=[1, 3, 16, 15]), 400),
        (lambda r: r["inputs"][0].update(data=["a"] * 768), 400),
        (lambda r: r.update(outputs=[{"name": "nope"}]), 400),
        (lambda r: r["inputs"][0].update(data=[float("nan")] * 768), 422),
    ],
)
def test_bad_requests_get_v2_errors(server, mutate, status):
    x = random_batch(1, seed=202)
    request = {
        "inputs": [
            {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
        ]
    }
    mutate(request)
    content = json.dumps(request, allow_nan=True).encode()
    response = httpx.post(infer_url(server), content=content)
    assert response.status_code == status, response.text
    assert isinstance(response.json()["error"], str)


def test_binary_size_mismatch_and_unknown_model(server):
    x = random_batch(1, seed=203)
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes - 4},
                }
            ]
        }
    ).encode()
    response = httpx.post(
        infer_url(server),
        content=head + x.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert response.status_code == 400
    assert httpx.post(infer_url(server, "other"), content=head).status_code == 404


def test_triton_http_client_unchanged(server, reference):
    triton = pytest.importorskip("tritonclient.http")
    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny")
    assert client.get_model_metadata("tiny")["inputs"][0]["name"] == "x"
    x = random_batch(4, seed=204)
    for binary in (True, False):
        tensor = triton.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        wanted = [triton.InferRequestedOutput("logits", binary_data=binary)]
        result = client.infer("tiny", [tensor], outputs=wanted)
        np.testing.assert_allclose(result.as_numpy("logits"), reference(x), rtol=RTOL, atol=ATOL)
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("tiny", [tensor])  # no outputs named: all outputs, binary
    np.testing.assert_allclose(result.as_numpy("logits"), reference(x), rtol=RTOL, atol=ATOL)
    with pytest.raises(triton.InferenceServerException, match="not served"):
        client.infer("other", [tensor])
    client.close()
