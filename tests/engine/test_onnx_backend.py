"""ONNX's own conformance runner over engine.onnx_backend: the claimed set of
tests/engine/conformance.py against onnx's expected outputs."""

from __future__ import annotations

import re

import numpy as np
import pytest
from onnx import TensorProto, helper

from engine import onnx_backend
from tests.engine.conformance import EXCLUDED, MODELS, OPERATORS, claimed_backend_test

backend_test = claimed_backend_test(onnx_backend, __name__)
globals().update(backend_test.test_cases)


@pytest.fixture(autouse=True)
def _onnx_home(tmp_path_factory, monkeypatch):
    """The runner writes the light models' input data under ONNX_HOME: keep it out of ~."""
    monkeypatch.setenv("ONNX_HOME", str(tmp_path_factory.getbasetemp() / "onnx_home"))


def test_backend_interface_specialises_on_shape_inputs():
    """A Reshape target fed as a graph input: one plan per distinct value, each exact."""
    node = helper.make_node("Reshape", ["x", "shape"], ["y"])
    graph = helper.make_graph(
        [node], "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4]),
         helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    rep = onnx_backend.prepare(model, "CPU")
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    for target in ([6, 4], [4, -1], [6, 4]):
        (y,) = rep.run([x, np.array(target, np.int64)])
        assert np.array_equal(y, x.reshape(target))
    assert len(rep.models) == 2
    (y,) = onnx_backend.run_model(model, {"x": x, "shape": np.array([24, 1], np.int64)})
    assert np.array_equal(y, x.reshape(24, 1))


def test_backend_devices():
    assert onnx_backend.supports_device("CPU")
    assert not onnx_backend.supports_device("FPGA")


def test_every_included_pattern_names_existing_tests():
    """Guards the selection against renamed node tests: each claimed operator and model still
    has conformance tests, and most of them run."""
    names = {name for case in backend_test.test_cases.values() for name in dir(case)
             if name.endswith("_cpu")}  # fmt: skip
    included = set()
    for item in OPERATORS + MODELS:
        matches = {name for name in names if re.match(rf"^test_{item}(_.*)?_cpu$", name)}
        assert matches, item
        included |= matches
    run = [name for name in included if not any(re.search(p, name) for p in EXCLUDED)]
    assert len(run) >= 200
