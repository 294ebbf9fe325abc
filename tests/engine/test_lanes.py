"""Compiled steps split across lanes without the GIL (engine/lanes.py, engine/spin.py): the
atomics, the split padding, a batch-1 pass against onnxruntime across the lanes' sleep and
wake-up, and two models' passes from two threads at once."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import onnxruntime as ort
import pytest

import engine.autotune as autotune
from engine import jit, lanes, load_model
from engine.bench.nets import cifar_net, mobilenet
from engine.chain import LaneChain
from tests.engine.conv_cases import split_first
from tests.engine.reference import rel_error

pytestmark = pytest.mark.skipif(not lanes.available(), reason="lanes need numba and 2 cores")


def test_atomics_load_store_and_swap():
    numba = jit.compiler().numba
    from engine import spin

    @numba.njit
    def exercise(word):
        spin.store(word, 3, 7)
        first = spin.swap(word, 3, 6, 9)  # holds 7, not 6: no swap
        second = spin.swap(word, 3, 7, 11)
        return spin.load(word, 3), first, second

    word = np.zeros(8, np.int64)
    assert exercise(word) == (11, False, True)
    assert word.tolist() == [0, 0, 0, 11, 0, 0, 0, 0]


@pytest.mark.parametrize(
    "name, n, size, pads",
    [
        (name, *case)
        for name in ("implicit_gemm", "implicit_gemm_narrow", "winograd_f2x2_compiled",
                     "winograd_f4x4_compiled")
        for case in ((1, 13, (1, 1, 1, 1)), (1, 10, (2, 0, 1, 2)), (3, 9, (1, 2, 0, 1)))
    ]
    # whole-map tiles: maps of 2x5 and 2x3 pixels
    + [("implicit_gemm_map", 1, 2, (1, 1, 1, 1)), ("implicit_gemm_map", 3, 2, (1, 0, 0, 0))],
)  # fmt: skip
def test_each_share_pads_the_rows_it_reads(name, n, size, pads):
    """A conv split across lanes is one phase: each lane's call pads the padded rows its own
    share reads (rows at a share boundary written by both) into a workspace that holds
    anything (NaN here), never waiting for a padding pass. Against a float64 reference."""
    from engine.backends import resolve_backend
    from engine.conv import ALGORITHMS, ConvSpec
    from tests.engine.reference import conv2d_nchw

    backend = resolve_backend("cpu")
    rng = np.random.default_rng(size)
    spec = ConvSpec(n, 16, size, size + 3, 24, 3, 3, pads)
    weight = rng.standard_normal((24, 16, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(24).astype(np.float32)
    algo = ALGORITHMS[name](spec, weight, bias, backend)
    workspace = np.empty(type(algo).workspace_elems(spec), np.float32)
    out = np.empty((n, spec.out_h, spec.out_w, 24), np.float32)
    with lanes.held(0.1):
        for _ in range(3):  # fresh inputs, the workspace poisoned before each call
            x = rng.standard_normal((n, 16, size, size + 3)).astype(np.float32)
            workspace[...], out[...] = np.nan, np.nan
            algo(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), out, workspace)
            expected = conv2d_nchw(x, weight, bias, pads, (1, 1))
            assert rel_error(out.transpose(0, 3, 1, 2), expected) < 1e-4
    phases = algo.lane_phases(x, out, workspace, lanes.lane_count())
    assert len(phases) == 1


@pytest.fixture
def cifar(monkeypatch):
    monkeypatch.setattr(autotune, "heuristic_default", split_first)
    proto = cifar_net(seed=6)
    return proto.SerializeToString(), ort.InferenceSession(proto.SerializeToString())


def lane_chains(model) -> list:
    plan = model._plan((1, *model.input_shape))
    return [s for s in plan._segments if isinstance(s, LaneChain)]


def test_a_batch_1_pass_runs_across_the_lanes_and_survives_their_sleep(cifar):
    model_bytes, session = cifar
    model = load_model(model_bytes, batch_sizes=(1, 4), autotune_mode="off")
    rng = np.random.default_rng(0)
    for call in range(12):
        x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
        assert rel_error(model(x), session.run(None, {"input": x})[0]) < 1e-4
        if call % 3 == 2:  # long enough for the lane threads to stop spinning and sleep
            time.sleep(20 * lanes.SPIN_S)
            states = lanes.lanes().ctrl[lanes.lanes().spin.STRIDE :: lanes.lanes().spin.STRIDE]
            assert (states == lanes.lanes().spin.SLEEP).all()
    (chain,) = lane_chains(model)
    assert max(chain.widths) == lanes.lane_count()  # the convs: one share per lane


def test_two_models_from_two_threads_at_once(cifar):
    """Each thread's passes take turns on the lanes; no output is mixed up or lost."""
    model_bytes, session = cifar
    other = mobilenet(seed=3, size=32)
    other_session = ort.InferenceSession(other.SerializeToString())
    models = [load_model(proto, batch_sizes=(1,), autotune_mode="off")
              for proto in (model_bytes, other.SerializeToString())]  # fmt: skip
    sessions = [session, other_session]
    for model in models:  # plans and chains built before the threads start
        model(np.zeros((1, 3, 32, 32), np.float32))
        model(np.zeros((1, 3, 32, 32), np.float32))
    errors, failures = [[], []], []

    def work(index: int) -> None:
        rng = np.random.default_rng(index)
        try:
            for _ in range(60):
                x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
                expected = sessions[index].run(None, {"input": x})[0]
                errors[index].append(rel_error(models[index](x), expected))
        except Exception as error:  # reported below: a thread's exception is otherwise lost
            failures.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures and not any(thread.is_alive() for thread in threads)
    assert len(errors[0]) == len(errors[1]) == 60
    assert max(errors[0] + errors[1]) < 1e-4
    assert lane_chains(models[0]) and lane_chains(models[1])


def test_the_tuner_times_compiled_candidates_as_chain_steps_and_charges_the_others(
    monkeypatch,
):
    """Below one image per core every compiled candidate, split or not, runs through a lane
    call (after an untimed one that moves the lanes onto it), with the reference's output; a
    candidate that is not compiled (BLAS) is charged two chain-switching lane calls. In a
    batch slice (one thread per op) a compiled candidate's kernel runs alone, as a chain
    calls it, and BLAS is charged two empty chain calls."""
    from engine.autotune.measure import Trial
    from engine.backends import resolve_backend
    from engine.conv import ALGORITHMS, ConvSpec, Epilogue

    backend = resolve_backend("cpu")
    rng = np.random.default_rng(8)
    spec = ConvSpec(1, 24, 9, 9, 40, 1, 1, (0, 0, 0, 0), (1, 1), (1, 1), 1,
                    epilogue=Epilogue("relu"))  # fmt: skip
    weight = rng.standard_normal((40, 24, 1, 1)).astype(np.float32)
    bias = rng.standard_normal(40).astype(np.float32)
    with lanes.held(0.1):
        trial = Trial(backend, spec)
        assert trial.chain_break_s > 0
        reference = ALGORITHMS["im2col_gemm"](spec, weight, bias, backend)
        trial.run(reference)
        expected = trial.out.copy()
        for name in ("implicit_gemm", "implicit_gemm_1t"):
            algo = ALGORITHMS[name](spec, weight, bias, backend)
            trial.out[...] = np.nan
            trial.run(algo)
            assert rel_error(trial.out, expected) < 1e-5
            key, chain = algo._lane_chain  # it ran as a lane chain's step
            assert key[-1] and isinstance(chain, LaneChain)
        gemm = ALGORITHMS["gemm_1x1"](spec, weight, bias, backend)
        assert not gemm.run_in_lanes(trial.x, trial.out, trial.scratch.get(1), unsplit=True)
        assert trial.run(gemm) >= trial.chain_break_s
    # a batch slice's plan: the compiled kernel alone (never its Python wrapper), BLAS charged
    sliced = Trial(backend, dataclasses.replace(spec, threads=1))
    assert sliced.in_slice and sliced.chain_break_s > 0
    sliced.run(ALGORITHMS["im2col_gemm"](sliced.spec, weight, bias, backend))
    expected = sliced.out.copy()  # (the input is drawn per spec)
    algo = ALGORITHMS["implicit_gemm"](sliced.spec, weight, bias, backend)
    monkeypatch.setattr(type(algo), "__call__", lambda *args: pytest.fail("Python wrapper"))
    sliced.out[...] = np.nan
    assert sliced.run(algo) > 0  # (the wrapper would have failed the test)
    assert rel_error(sliced.out, expected) < 1e-5
    assert "_lane_chain" not in algo.__dict__
    gemm = ALGORITHMS["gemm_1x1"](sliced.spec, weight, bias, backend)
    assert sliced.run(gemm) >= sliced.chain_break_s


@pytest.mark.parametrize("k, stride", [(128, 1), (192, 2), (80, 1)])
def test_deep_layers_on_small_maps_split_output_channels_across_lanes(k, stride):
    """Weights that outweigh the input: each lane computes whole blocks of output channels
    for every pixel (from its own weights, bias and output offsets; with 80 channels the
    second lane's block is partial), where there is a block per lane; else bands of rows.
    Against a float64 reference."""
    from engine.backends import resolve_backend
    from engine.conv import ALGORITHMS, ConvSpec, Epilogue
    from tests.engine.reference import conv2d_nchw

    backend = resolve_backend("cpu")
    rng = np.random.default_rng(k)
    spec = ConvSpec(1, 24, 5, 5, k, 3, 3, (1, 1, 1, 1), (stride, stride), (1, 1), 1,
                    epilogue=Epilogue("relu"))  # fmt: skip
    x = rng.standard_normal((1, 24, 5, 5)).astype(np.float32)
    weight = rng.standard_normal((k, 24, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(k).astype(np.float32)
    algo = ALGORITHMS["implicit_gemm"](spec, weight, bias, backend)
    shares = algo._channel_shares(lanes.lane_count())
    assert (shares is not None) == (-(-k // algo.kb) >= lanes.lane_count())
    out = np.full((1, spec.out_h, spec.out_w, k), np.nan, np.float32)
    workspace = np.zeros(ALGORITHMS["implicit_gemm"].workspace_elems(spec), np.float32)
    with lanes.held(0.1):
        for _ in range(3):
            algo(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), out, workspace)
    expected = np.maximum(conv2d_nchw(x, weight, bias, (1, 1, 1, 1), (stride, stride)), 0)
    assert rel_error(out.transpose(0, 3, 1, 2), expected) < 1e-5
