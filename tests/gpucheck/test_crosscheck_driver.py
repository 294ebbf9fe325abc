"""``python -m gpucheck.crosscheck`` on the CPU: the NumPy engine as the checked device, on a bench
net and on conformance cases, with and without a layer made wrong."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine import load_model
from engine.bench.nets import cifar_net
from gpucheck.crosscheck import (
    CHECK_PREFIX,
    PairedRep,
    check_model,
    conformance_lines,
    main,
    nets_table,
    run_conformance,
)
from tests.engine.faults import break_conv, conv_names

BUCKETS = (1, 4)


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    path = tmp_path_factory.mktemp("net") / "cifar.onnx"
    path.write_bytes(cifar_net(seed=5).SerializeToString())
    reference = load_model(path, "cpu", BUCKETS, autotune_mode="off", cpu_threading="blas")
    return path, reference


def test_a_wrong_layer_is_a_failed_row_naming_it(net):
    path, reference = net
    good = load_model(path, "cpu", BUCKETS, autotune_mode="off")
    bad = load_model(path, "cpu", BUCKETS, autotune_mode="off")
    layer = conv_names(bad)[3]
    break_conv(bad, layer, shift=0.3)
    rows = [check_model("good", good, reference), check_model("bad", bad, reference)]
    table = "\n".join(nets_table(rows))
    assert "| good | 1,4 |" in table and "| pass |" in table
    bad_row = next(line for line in table.splitlines() if line.startswith("| bad |"))
    assert "| FAIL |" in bad_row and f"{layer} (im2col_gemm (wrong)" in bad_row
    assert (
        "- bad: cross-check failed on cpu" in table and f"first appears at layer {layer}" in table
    )


def tiny_conv() -> onnx.ModelProto:
    w = np.random.default_rng(2).standard_normal((4, 3, 3, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1] * 4)
    graph = helper.make_graph([node], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 5, 5])],
                              [numpy_helper.from_array(w, "w")])  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_the_paired_backend_fails_a_case_the_device_gets_wrong():
    rep = PairedRep(tiny_conv(), "cpu")
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype(np.float32)
    (y,) = rep.run([x])
    (want,) = rep.reference.run([x])
    np.testing.assert_array_equal(y, want)
    for model in rep.checked.models.values():
        break_conv(model, "Conv_0", shift=0.1)
    with pytest.raises(AssertionError, match=f"^{CHECK_PREFIX} output 0 on cpu differs"):
        rep.run([x])


def test_conformance_cases_through_onnx_runner(tmp_path):
    result = run_conformance("cpu", r"^test_(basic_conv|conv_with_strides|relu|maxpool_2d_pads)",
                             tmp_path)  # fmt: skip
    assert result.wasSuccessful() and result.testsRun - len(result.skipped) >= 6
    lines = conformance_lines(result)
    assert lines[0].startswith(
        f"conformance: {result.testsRun - len(result.skipped)} run, 0 differ"
    )


def test_main_prints_tables_and_a_verdict(tmp_path, capsys):
    assert main(["--device", "cpu", "--nets", "cifar", "--buckets", "1,2", "--conformance",
                 "^test_relu_", "--workdir", str(tmp_path)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "| cifar | 1,2 |" in out and "cross-check on cpu: passed" in out
