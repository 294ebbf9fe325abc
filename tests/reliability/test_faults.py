"""Fault injection through HTTP, counted: an engine that raises on a marked input and reports
out-of-memory above a batch size, under 60 concurrent clients. Every request is answered exactly
once: poisoned ones fail alone, all others get the answer the engine gives them solo, and the
engine ran each good image exactly once (``gemmserve_images_total``).

The single-fault cases (one poisoned input in a held batch, one split for out-of-memory, queue
full, deadline, disconnect) are in tests/service/test_batching_http.py.
"""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import engine
from tests.reliability.harness import assert_error, http, metric_samples

POISON = 777.25
SLOW = 555.5  # holds the engine while the hold file exists
OOM_ABOVE = 3
CLIENTS = 60


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def fault_server(server_factory, tmp_path_factory):
    hold = tmp_path_factory.mktemp("hold") / "hold"
    faults = ("--poison", str(POISON), "--oom-above", str(OOM_ABOVE))
    faults += ("--slow", str(SLOW), "--hold-file", str(hold))
    server = server_factory("--max-batch-size", "16", faults=faults)
    server.hold_file = hold
    yield server
    server.stop()


@pytest.fixture(scope="module")
def solo(model_dir):
    """The engine itself, one image at a time: the answer each request must get."""
    model = engine.load_model(str(model_dir / "model.onnx"), device="cpu", batch_sizes=(1,))
    return lambda x: np.array(model(x[None])[0], np.float64)


def counters(url: str) -> dict[str, float]:
    def total(name, **labels):
        samples = metric_samples(url, name)
        return sum(v for k, v in samples.items() if set(labels.items()) <= set(k))

    return {
        "images": total("gemmserve_images_total"),
        "oom_splits": total("gemmserve_batch_splits_total", reason="oom"),
        "error_splits": total("gemmserve_batch_splits_total", reason="error"),
        "batches": total("gemmserve_batch_size_count"),
    }


def post(url: str, x: np.ndarray):
    return http.post(
        url + "/predict?raw=true", content=npy(x), headers={"content-type": "application/x-npy"}
    )


def test_poison_and_out_of_memory_under_load_answer_everyone_once(fault_server, solo):
    rng = np.random.default_rng(12)
    inputs = rng.standard_normal((CLIENTS, 3, 16, 16)).astype(np.float32)
    poisoned = set(range(5, CLIENTS, 7))
    for i in poisoned:
        inputs[i, 0, 0, 0] = POISON
    inputs[0, 0, 0, 0] = SLOW
    before = counters(fault_server.url)
    fault_server.hold_file.touch()
    with ThreadPoolExecutor(CLIENTS) as pool:
        # The first request holds the engine until the others queue up, so that full batches
        # (each above the out-of-memory size, some with a poisoned input) form at once.
        first = pool.submit(post, fault_server.url, inputs[0])
        wait_for_gauge(fault_server.url, "gemmserve_batch_running_images", 1)
        rest = [pool.submit(post, fault_server.url, x) for x in inputs[1:]]
        wait_for_gauge(fault_server.url, "gemmserve_queue_depth", CLIENTS - 1)
        fault_server.hold_file.unlink()
        responses = [first.result()] + [f.result() for f in rest]
    after = counters(fault_server.url)

    for i, (x, response) in enumerate(zip(inputs, responses, strict=True)):
        if i in poisoned:
            assert_error(response, 500, "inference_failed")
            continue
        assert response.status_code == 200, (i, response.text)
        (result,) = response.json()["results"]
        np.testing.assert_allclose(result["output"], solo(x), rtol=1e-4, atol=1e-5)
    good = CLIENTS - len(poisoned)
    # Each good image ran in exactly one successful batch; failed batches count nothing.
    assert after["images"] - before["images"] == good
    assert after["error_splits"] > before["error_splits"]
    assert after["oom_splits"] > before["oom_splits"]


def wait_for_gauge(url: str, name: str, value: float, timeout_s: float = 30) -> None:
    """Until the gauge ``name`` reaches ``value``."""
    end = time.monotonic() + timeout_s
    while metric_samples(url, name).get((), 0) < value:
        assert time.monotonic() < end, f"{name} never reached {value}"
        time.sleep(0.01)
