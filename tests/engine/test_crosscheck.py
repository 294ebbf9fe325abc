"""The start-up cross-check on the CPU: the NumPy engine as the checked model, with and without a
layer made wrong (as a broken GPU kernel would be), against the NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest

from engine import CrossCheckError, load_model
from engine.autotune.__main__ import main as autotune_main
from engine.bench.nets import cifar_net
from engine.crosscheck import TOLERANCE, difference, precision_of
from tests.engine.faults import break_conv, conv_names

BUCKETS = (1, 2, 8)


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("nets") / "cifar.onnx"
    path.write_bytes(cifar_net(seed=3).SerializeToString())
    return path


@pytest.fixture
def model(onnx_path):
    """Tuned algorithms (Winograd, chunked, threaded...) where they won: not the reference's
    (tuned once, by the first test, into a cache file beside the net)."""
    cache = onnx_path.with_suffix(".autotune.json")
    return load_model(onnx_path, "cpu", BUCKETS, autotune_cache=cache)


def test_a_correct_model_passes_and_info_reports_it(model):
    result = model.cross_check()
    assert result["passed"] and result["math"] == "fp32"
    assert [b["bucket"] for b in result["buckets"]] == list(BUCKETS)
    assert all(b["relative_error"] <= TOLERANCE["fp32"] for b in result["buckets"])
    assert model.info()["crosscheck"] == result


def test_a_wrong_layer_is_refused_and_named(model):
    layer = conv_names(model)[2]
    break_conv(model, layer, shift=0.05, buckets=(8,))
    with pytest.raises(CrossCheckError) as raised:
        model.cross_check()
    result = raised.value.result
    failed = [b for b in result["buckets"] if not b["passed"]]
    assert [b["bucket"] for b in failed] == [8]
    blamed = failed[0]["layer"]
    assert blamed["layer"] == layer and blamed["op"] == "Conv"
    assert blamed["relative_error"] > TOLERANCE["fp32"] and blamed["max_abs_error"] > 0
    assert failed[0]["max_abs_error"] > 0 and failed[0]["layers_checked"] > 5
    message = str(raised.value)
    assert f"first appears at layer {layer} (Conv" in message and "bucket 8" in message
    assert f"{failed[0]['relative_error']:.2e}" in message
    assert model.info()["crosscheck"]["passed"] is False


def test_an_error_within_the_tolerance_passes(model):
    break_conv(model, conv_names(model)[0], shift=1e-7)
    assert model.cross_check()["passed"]


def test_a_later_layer_is_blamed_for_its_own_error_only(model):
    names = conv_names(model)
    break_conv(model, names[-1], shift=0.2)
    with pytest.raises(CrossCheckError) as raised:
        model.cross_check()
    assert {b["layer"]["layer"] for b in raised.value.result["buckets"]} == {names[-1]}


def test_a_mismatch_no_layer_explains_points_at_the_graph_path(model):
    """Only the serving path (``backend.execute``, where CUDA graphs replay) is wrong: every
    layer is right when run step by step, and the message says so."""
    backend = model.backend

    def replay_differs(plan):
        outputs = type(backend).execute(backend, plan)
        outputs[0][...] += 1.0
        return outputs

    backend.execute = replay_differs
    with pytest.raises(CrossCheckError, match="graph replay differs from eager"):
        model.cross_check()


def test_difference_handles_zeros_non_finite_and_shapes():
    x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    assert difference(x, x).relative == 0
    assert difference(np.zeros(6), np.full(6, 1e-10)).relative <= 1e-4  # not infinitely off
    assert difference(x[:2], x).relative == np.inf
    nan = x.copy()
    nan[0, 0] = np.nan
    assert difference(nan, x).relative == np.inf
    assert difference(nan, nan).relative == 0  # the reference's NaN is matched
    assert difference(np.arange(3), np.arange(3)).relative == 0
    assert difference(np.arange(3), np.arange(1, 4)).relative == np.inf


def test_tf32_tolerance_only_where_tf32_may_run(model):
    assert precision_of(model) == "fp32"  # allow_tf32 means nothing on the CPU
    model.tuner.allowed_math = ("fp32", "tf32")  # as on a GPU with --allow-tf32
    assert precision_of(model) == "tf32"
    assert model.cross_check()["tolerance"] == TOLERANCE["tf32"]


def test_autotune_cli_checks_the_tuned_model(onnx_path, tmp_path, capsys):
    cache = tmp_path / "cache.json"
    assert autotune_main([str(onnx_path), "--cache", str(cache), "--batch-sizes", "1,2",
                          "--cross-check", "always"]) == 0  # fmt: skip
    assert (
        "cross-check passed: every bucket within 1e-03 of the numpy engine"
        in capsys.readouterr().out
    )


def test_autotune_cli_refuses_a_wrong_layer(onnx_path, tmp_path, capsys, monkeypatch):
    """The fault is in the model the CLI loads (a conv made wrong right after loading); the
    check itself runs as it does on a GPU."""
    import engine

    real_load = engine.load_model

    def load_broken(*args, **kwargs):
        model = real_load(*args, **kwargs)
        break_conv(model, conv_names(model)[1])
        return model

    monkeypatch.setattr(engine, "load_model", load_broken)
    argv = [str(onnx_path), "--cache", str(tmp_path / "c.json"), "--batch-sizes", "2"]
    assert autotune_main(argv) == 0  # no check on the CPU unless asked
    assert autotune_main([*argv, "--cross-check", "always"]) == 1
    err = capsys.readouterr().err
    assert "cross-check failed on cpu: batch bucket 2" in err and "first appears at layer" in err
