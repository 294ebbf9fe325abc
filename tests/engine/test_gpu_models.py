"""Whole models: ``device="cuda"`` against ``device="cpu"`` on fresh random inputs.

Each body runs on the CPU emulator of the CUDA kernels (the CuPy backend's kernel paths with
NumPy arrays; no GPU needed) and on a real GPU (marker ``gpu``), there with CUDA graphs on and
off. Batches of 1 and 3 against buckets (1, 4): padding up to a bucket is covered too.
"""

from __future__ import annotations

import numpy as np
import pytest

import engine.autotune
import engine.model
from engine import load_model
from engine.conv import WinogradF2x2
from tests.engine.gpu_models import MODELS
from tests.engine.reference import rel_error

BUCKETS = (1, 4)
KERNELS_OF = {
    "cifar": {"im2col_nhwc", "bias_activation", "pool_nhwc"},
    "separable": {"depthwise_nhwc", "pool_nhwc", "bias_activation"},
    "epilogues": {"bias_activation"},
}


@pytest.fixture(params=["emulated", pytest.param("cuda", marks=pytest.mark.gpu),
                        pytest.param("cuda-eager", marks=pytest.mark.gpu)])  # fmt: skip
def cuda_model(request, monkeypatch, tmp_path):
    """load(name, winograd=False) -> (model on the CUDA path, the same model on the CPU)."""

    def load(name: str, winograd: bool = False):
        build, _ = MODELS[name]
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(build().SerializeToString())
        if winograd:  # every applicable 3x3 conv takes Winograd F(2x2, 3x3)
            default = engine.autotune.heuristic_default
            monkeypatch.setattr(engine.autotune, "heuristic_default", lambda spec: (
                WinogradF2x2.name if WinogradF2x2.applicable(spec) else default(spec)))  # fmt: skip
        cpu = load_model(path, "cpu", BUCKETS, autotune_mode="off")
        if request.param == "emulated":
            backend = request.getfixturevalue("emulated")
            backend.launches.clear()
            monkeypatch.setattr(engine.model, "resolve_backend", lambda *a, **k: backend)
        else:
            request.getfixturevalue("cuda_backend")  # skips without a device
        graphs = request.param == "cuda"
        cuda = load_model(path, "cuda", BUCKETS, autotune_mode="off", cuda_graphs=graphs)
        return cuda, cpu

    return load


def compare(cuda, cpu, chw, tolerance=1e-5):
    rng = np.random.default_rng()
    for n in (1, 3, 3):  # the second batch of 3 replays what the first one captured
        x = rng.standard_normal((n, *chw)).astype(np.float32)
        got, expected = cuda(x), cpu(x)
        assert got.shape == expected.shape
        assert rel_error(got, expected) < tolerance, (n, rel_error(got, expected))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_matches_cpu(cuda_model, name):
    cuda, cpu = cuda_model(name)
    compare(cuda, cpu, MODELS[name][1])
    launches = getattr(cuda.backend, "launches", None)
    if launches is not None:  # the emulator records which kernels ran
        expected = KERNELS_OF.get(name, {"pool_nhwc"})
        assert expected <= set(launches), set(launches)


@pytest.mark.parametrize("name", ["cifar", "epilogues"])
def test_winograd_model_matches_cpu(cuda_model, name):
    cuda, cpu = cuda_model(name, winograd=True)
    assert any(layer["algorithm"] == WinogradF2x2.name for layer in cuda.info()["layers"])
    compare(cuda, cpu, MODELS[name][1])
    launches = getattr(cuda.backend, "launches", None)
    if launches is not None:
        assert {"winograd_f2x2_input", "winograd_f2x2_output"} <= set(launches)
