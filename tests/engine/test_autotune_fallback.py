"""A conv whose tuned algorithm runs out of memory at run time falls back to its runner-up."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from engine import load_model
from engine.bench.nets import cifar_net
from engine.conv import ALGORITHMS


class OutOfMemory:
    """Stands in for an algorithm that fails on the device; counts its calls."""

    def __init__(self, algorithm, error):
        self.inner, self.error, self.calls = algorithm, error, 0
        self.name, self.spec = algorithm.name, algorithm.spec

    def __call__(self, x, out, workspace):
        self.calls += 1
        raise self.error


def first_conv(model):
    plan = next(iter(model.plans.values()))
    return plan.conv_steps()[0].op


def test_out_of_memory_falls_back_to_runner_up(tmp_path):
    path = tmp_path / "cifar.onnx"
    path.write_bytes(cifar_net(seed=2).SerializeToString())
    model = load_model(path, "cpu", (4,), autotune_cache=tmp_path / "cache.json")
    op = first_conv(model)
    room = op.workspace.nbytes // 4
    fits = [n for n in op.choice.runners_up if ALGORITHMS[n].workspace_elems(op.spec) <= room]
    expected_name = fits[0]  # the first runner-up that fits the planned workspace
    failing = OutOfMemory(op.algorithm, MemoryError("out of memory"))
    op.algorithm = op.choice.algorithm = failing
    x = np.random.default_rng(3).standard_normal((4, 3, 32, 32), dtype=np.float32)
    y = model(x)
    session = ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
    reference = session.run(None, {"input": x})[0]
    assert np.linalg.norm(y - reference) / np.linalg.norm(reference) < 1e-4
    assert failing.calls == 1 and op.algorithm.name == expected_name
    assert op.choice.source == "fallback" and model.tuner.stats.fallbacks == 1
    model(x)
    assert failing.calls == 1  # the switch is for good
    conv_layers = [layer for layer in model.info()["layers"] if layer["op"] == "Conv"]
    assert conv_layers[0]["source"] == "fallback"


def test_other_errors_are_not_swallowed(tmp_path):
    path = tmp_path / "cifar.onnx"
    path.write_bytes(cifar_net(seed=2).SerializeToString())
    model = load_model(path, "cpu", (2,), autotune_mode="off")
    op = first_conv(model)
    op.algorithm = OutOfMemory(op.algorithm, ValueError("a bug"))
    with pytest.raises(ValueError, match="a bug"):
        model(np.ones((2, 3, 32, 32), np.float32))
    assert model.tuner.stats.fallbacks == 0
