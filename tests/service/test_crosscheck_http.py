"""The start-up cross-check through a real service process: ``--cross-check always`` runs it on
the CPU (on a GPU it always runs), ``/model`` reports it, and a wrong layer keeps the service from
ever becoming ready."""

from __future__ import annotations

import contextlib

import httpx
import numpy as np

from tests.service.conftest import NPY_TYPE, Server, npy_bytes, random_batch


def test_a_passing_check_is_reported_on_model(model_dir, reference):
    server = Server(["--model", str(model_dir), "--cross-check", "always"]).wait_ready()
    try:
        info = httpx.get(server.url + "/model", timeout=5).json()
        check = info["crosscheck"]
        assert check["passed"] and check["reference"].startswith("numpy engine")
        assert [b["bucket"] for b in check["buckets"]] == info["batch_sizes"]
        assert info["service"]["cross_check"] == "always"
        x = random_batch(1)
        response = httpx.post(server.url + "/predict?raw=true", content=npy_bytes(x),
                              headers=NPY_TYPE, timeout=30)  # fmt: skip
        got = np.array(response.json()["results"][0]["output"], np.float32)
        np.testing.assert_allclose(got, reference(x)[0], rtol=1e-4, atol=1e-5)
    finally:
        server.stop()


def test_a_wrong_layer_refuses_to_start_naming_it(model_dir):
    """The engine's conv ``Conv_0`` computes a wrong result: the service exits 1 with the error
    and the layer in its log, and ``/readyz`` never said ready."""
    flags = ["--model", str(model_dir), "--cross-check", "always", "--log-level", "info"]
    server = Server(flags, faults=["--wrong-conv", "Conv_0"])
    statuses = set()
    try:
        while server.proc.poll() is None:
            with contextlib.suppress(httpx.TransportError):  # not listening yet, or gone
                statuses.add(httpx.get(server.url + "/readyz", timeout=2).status_code)
        assert server.proc.wait(60) == 1
        log = server.output()
    finally:
        server.stop()
    assert 200 not in statuses
    assert "cross-check failed on cpu" in log and "relative" in log
    assert "first appears at layer Conv_0 (Conv, algorithm" in log
    assert "Traceback" not in log
