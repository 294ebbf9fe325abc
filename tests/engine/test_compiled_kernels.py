"""The numba-compiled conv algorithms: numerics on the shapes they specialise for, numba's
settings and disk cache, and an engine that still runs where numba is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine import jit, lanes
from engine.backends import NumpyBackend
from engine.conv import ALGORITHMS, Epilogue, candidates, simd
from engine.conv.implicit_gemm import conv_kernel
from engine.conv.winograd_compiled import WinogradCompiled
from tests.engine.conv_cases import (
    EPILOGUES,
    make_problem,
    make_spec,
    reference_nhwc,
    run_algorithm,
)
from tests.engine.reference import rel_error

ROOT = Path(__file__).resolve().parents[2]
COMPILED = ("implicit_gemm", "implicit_gemm_narrow", "implicit_gemm_map",
            "winograd_f2x2_compiled", "winograd_f4x4_compiled")  # fmt: skip
#: the same on the calling thread only (offered below one image per core)
ONE_THREAD = tuple(f"{name}_1t" for name in COMPILED)
BACKEND = NumpyBackend()

# (n, c, h, w, k, r, s, pads, strides, dilations, groups): the 3-channel first layer, every
# register tile (K = 8, 16, 24 and over) with channel remainders, widths off the pixel tile,
# odd output sizes (partial Winograd tiles), a batch below and above the core count
SHAPES = (
    (1, 3, 32, 32, 32, 3, 3, (1, 1, 1, 1), (1, 1), (1, 1), 1),
    (3, 3, 17, 19, 8, 3, 3, (1, 1, 1, 1), (1, 1), (1, 1), 1),
    (5, 16, 13, 11, 40, 3, 3, (1, 1, 1, 1), (1, 1), (1, 1), 1),
    (2, 32, 9, 15, 16, 3, 3, (0, 1, 2, 1), (1, 1), (1, 1), 1),
    (1, 24, 15, 15, 64, 3, 3, (1, 1, 1, 1), (2, 2), (1, 1), 1),
    (4, 12, 14, 10, 20, 5, 5, (2, 1, 2, 3), (1, 2), (2, 1), 1),
    (3, 64, 8, 8, 30, 1, 1, (0, 0, 0, 0), (1, 1), (1, 1), 1),
    # the narrow tile: 14 pixels and a 3-pixel tail, 72 channels (two 32-channel blocks and 8);
    # 7-wide rows, the lanes splitting 128 channels at batch 1
    (1, 16, 17, 17, 72, 3, 3, (1, 1, 1, 1), (1, 1), (1, 1), 1),
    (1, 64, 7, 7, 128, 3, 3, (1, 1, 1, 1), (1, 1), (1, 1), 1),
    # one output row at batch 1: the lanes split the channels; whole-map tiles: a 2x2 map split
    # by channels, 4x3 maps (stride 2) split by images with 40 channels, a 3x4 map padded
    # unevenly with 24 channels
    (1, 32, 1, 6, 128, 3, 3, (1, 1, 1, 1), (1, 1), (1, 1), 1),
    (1, 64, 2, 2, 128, 3, 3, (1, 1, 1, 1), (1, 1), (1, 1), 1),
    (3, 16, 7, 6, 40, 3, 3, (1, 1, 1, 1), (2, 2), (1, 1), 1),
    (1, 8, 3, 4, 24, 3, 3, (0, 1, 2, 1), (1, 1), (1, 1), 1),
    # kernel rows on padding rows are skipped: pads of 3 (the first and last output rows read
    # padding only: bias and activation), dilated taps stepping over the padding
    (2, 8, 5, 6, 16, 3, 3, (3, 1, 3, 1), (1, 1), (1, 1), 1),
    (1, 8, 9, 7, 16, 3, 3, (3, 1, 2, 1), (1, 1), (2, 1), 1),
)


@pytest.mark.parametrize("name", COMPILED + ONE_THREAD)
@pytest.mark.parametrize("index", range(len(SHAPES)))
def test_compiled_matches_float64(monkeypatch, name, index):
    if name in ONE_THREAD:  # where lanes split the base, offered for 1x1 convs only
        monkeypatch.setattr(lanes, "available", lambda: False)
    spec = make_spec(SHAPES[index], EPILOGUES[index % len(EPILOGUES)])
    if name not in candidates(spec):
        assert name != "implicit_gemm"  # it runs every single-group conv
        assert not (name == "implicit_gemm_1t" and spec.n < spec.cores)
        pytest.skip(f"{name} does not apply to {spec.key()}")
    x, weight, bias = make_problem(spec, seed=index)
    y = run_algorithm(name, spec, x, weight, bias, BACKEND)
    assert np.isfinite(y).all()
    assert rel_error(y, reference_nhwc(spec, x, weight, bias)) < 1e-5


@pytest.mark.parametrize("name", COMPILED)
def test_compiled_takes_read_only_weights_and_bias(name):
    """ONNX initializers arrive as read-only arrays (views of the model file's bytes)."""
    spec = make_spec(SHAPES[0], EPILOGUES[0])
    x, weight, bias = make_problem(spec, seed=7)
    weight, bias = weight.copy(), bias.copy()
    weight.flags.writeable = bias.flags.writeable = False
    y = run_algorithm(name, spec, x, weight, bias, BACKEND)
    assert rel_error(y, reference_nhwc(spec, x, weight, bias)) < 1e-5


@pytest.mark.parametrize("name", [n for n in COMPILED if n.startswith("winograd")])
def test_winograd_chunks_smaller_than_a_thread_share(monkeypatch, name):
    """Several chunks per thread, the last one short: every tile is transformed once."""
    monkeypatch.setattr(WinogradCompiled, "chunk_bytes", 16 * 4 * (16 + 16) * 12)
    spec = make_spec((3, 16, 29, 29, 16, 3, 3, (1, 1, 1, 1), (1, 1), (1, 1), 1), Epilogue("relu"))
    algo = ALGORITHMS[name]
    th, tw = algo.tiles(spec)
    assert algo.chunk(spec) % simd.tile_shape(16)[0] == 0 and 2 * algo.chunk(spec) < th * tw
    x, weight, bias = make_problem(spec, seed=3)
    y = run_algorithm(name, spec, x, weight, bias, BACKEND)
    assert rel_error(y, reference_nhwc(spec, x, weight, bias)) < 1e-5


def test_tiles_fit_the_vector_registers():
    lanes, registers = simd.vector_shape()
    assert (lanes, registers) in ((16, 32), (8, 16))
    previous = 0
    for k in (1, 3, 8, 9, 16, 17, 32, 33, 64, 128, 512):
        pixels, vectors = simd.tile_shape(k)
        assert pixels * vectors + vectors + 1 <= registers  # accumulators, weights, broadcast
        assert vectors >= previous and (vectors * lanes >= k or vectors == previous)
        previous = vectors


def test_numba_configured_before_it_compiles():
    compiler = jit.compiler()
    from numba.core import config

    assert config.SLP_VECTORIZE == 1
    assert compiler.cache_dir.name == jit.cache_key(compiler.settings)
    settings = compiler.settings
    assert settings["slp_vectorize"] == "1" and settings["cpu_name"]
    assert settings["fastmath"] == "arcp,contract,ninf,nnan,nsz"
    assert BACKEND.fingerprint()["kernels"] == compiler.fingerprint()


def test_cache_directory_keyed_on_machine_code_settings():
    settings = dict(jit.compiler().settings)
    changed = [
        {**settings, "slp_vectorize": "0"},
        {**settings, "cpu_name": "other"},
        {**settings, "numba": "0.0"},
        {**settings, "fastmath": "fast"},
    ]
    keys = {jit.cache_key(s) for s in changed}
    assert len(keys) == len(changed) and jit.cache_key(settings) not in keys


def run_python(code: str, **env) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_a_second_process_loads_kernels_from_the_disk_cache():
    conv_kernel(*simd.tile_shape(32))  # compiled (or loaded) here first
    code = (
        "import json\n"
        "from engine.conv import simd\n"
        "from engine.conv.implicit_gemm import conv_kernel\n"
        "kernel = conv_kernel(*simd.tile_shape(32))\n"
        "print(json.dumps({'hits': sum(kernel.stats.cache_hits.values()),"
        " 'misses': sum(kernel.stats.cache_misses.values())}))\n"
    )
    stats = json.loads(run_python(code).strip().splitlines()[-1])
    assert stats == {"hits": 1, "misses": 0}


NO_NUMBA = """
import sys
sys.modules["numba"] = None  # import numba now raises ImportError
sys.modules["llvmlite"] = None
import json
import numpy as np
from engine import load_model
from engine.conv import ALGORITHMS, candidates
from tests.engine.conv_cases import make_spec, SHAPES
from tests.engine.onnx_builders import single_node
from tests.engine.reference import conv2d_nchw

rng = np.random.default_rng(5)
w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
x = rng.standard_normal((2, 4, 9, 9)).astype(np.float32)
onnx_model = single_node("Conv", {{"x": x}}, {{"w": w}}, pads=[1, 1, 1, 1])
model = load_model(onnx_model, batch_sizes=(2,), autotune_cache="{cache}")
y = model(x)
ref = conv2d_nchw(x, w, None, (1, 1, 1, 1), (1, 1), (1, 1), 1)
offered = {{n for s in SHAPES for n in candidates(make_spec(s))}}
print(json.dumps({{
    "error": float(np.linalg.norm(y - ref) / np.linalg.norm(ref)),
    "compiled_offered": sorted(offered & {{"implicit_gemm", "winograd_f2x2_compiled"}}),
    "registered": "implicit_gemm" in ALGORITHMS,
    "numba_imported": sys.modules.get("numba") is not None,
}}))
"""


def test_engine_runs_without_numba(tmp_path):
    code = NO_NUMBA.format(cache=tmp_path / "tune.json")
    result = json.loads(run_python(code).strip().splitlines()[-1])
    assert result["error"] < 1e-5
    assert result["compiled_offered"] == []
    assert result["registered"] and not result["numba_imported"]


def test_importing_engine_compiles_nothing():
    code = (
        "import sys\n"
        "import engine, engine.conv, engine.model\n"
        "print(sorted(m for m in ('numba', 'llvmlite') if m in sys.modules))\n"
    )
    assert run_python(code).strip().splitlines()[-1] == "[]"


# depthwise (groups = channels), multiplier 1: rows wider than the 8-pixel tile, channels over
# one vector with a remainder, strides, dilations, no padding (every pixel on the tile path)
DEPTHWISE_SHAPES = (
    (2, 40, 19, 21, 40, 3, 3, (1, 1, 1, 1), (1, 1), (1, 1), 40),
    (1, 24, 17, 30, 24, 3, 3, (1, 1, 1, 1), (2, 2), (1, 1), 24),
    (3, 17, 12, 25, 17, 5, 5, (2, 2, 2, 2), (1, 1), (2, 2), 17),
    (1, 32, 9, 20, 32, 3, 3, (0, 0, 0, 0), (1, 1), (1, 1), 32),
)


@pytest.mark.parametrize("index", range(len(DEPTHWISE_SHAPES)))
def test_compiled_depthwise_matches_float64(index):
    assert BACKEND.native_depthwise
    spec = make_spec(DEPTHWISE_SHAPES[index], EPILOGUES[index % len(EPILOGUES)])
    x, weight, bias = make_problem(spec, seed=20 + index)
    y = run_algorithm("depthwise_direct", spec, x, weight, bias, BACKEND)
    assert rel_error(y, reference_nhwc(spec, x, weight, bias)) < 1e-5
