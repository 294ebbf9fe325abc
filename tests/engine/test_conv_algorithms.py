"""Every conv algorithm against the float64 direct reference and against im2col_gemm."""

from __future__ import annotations

import os
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import engine.threads as threads_module
from engine import lanes
from engine.backends import NumpyBackend
from engine.conv import ALGORITHMS, REFERENCE, Epilogue, candidates, default_algorithm
from engine.conv.depthwise_direct import DepthwiseDirect
from engine.conv.im2col_gemm_chunked import Im2colGemmChunked, plan_chunks
from engine.conv.winograd import Winograd3x3
from engine.threads import blas_libraries, cpu_cores
from tests.engine.conv_cases import (
    EPILOGUES,
    SHAPES,
    make_problem,
    make_spec,
    reference_nhwc,
    run_algorithm,
)
from tests.engine.reference import rel_error

BACKEND = NumpyBackend()
FP32 = [name for name, algo in ALGORITHMS.items() if algo.math == "fp32"]


def check(name, spec, seed=0):
    x, weight, bias = make_problem(spec, seed)
    y = run_algorithm(name, spec, x, weight, bias, BACKEND)
    assert np.isfinite(y).all()
    tol = ALGORITHMS[name].tolerance
    assert rel_error(y, reference_nhwc(spec, x, weight, bias)) < tol
    y_ref = run_algorithm(REFERENCE, spec, x, weight, bias, BACKEND)
    assert rel_error(y, y_ref) < tol


GRID = [
    (name, index)
    for index, shape in enumerate(SHAPES)
    for name in FP32
    if ALGORITHMS[name].applicable(make_spec(shape))
]


@pytest.mark.parametrize(("name", "index"), GRID)
def test_algorithm_matches_reference(name, index):
    spec = make_spec(SHAPES[index], EPILOGUES[index % len(EPILOGUES)])
    check(name, spec, seed=index)


def test_grid_covers_every_algorithm():
    # im2col_gemm_chunked only applies above its chunk size: test_chunked_every_chunking
    expected = set(FP32) - {"im2col_gemm_chunked", "im2col_gemm_chunked_parallel"}
    if cpu_cores() < 2:
        expected = {name for name in expected if not name.endswith("_parallel")}
    if lanes.available():  # *_1t for 1x1 convs only: every shape in test_compiled_kernels.py
        expected = {name for name in expected if not name.endswith("_1t")}
        expected |= {name for name, _ in GRID if name.endswith("_1t")}
    assert {name for name, _ in GRID} == expected


@pytest.mark.parametrize("epilogue", EPILOGUES, ids=lambda e: e.kind)
def test_every_epilogue_on_every_3x3_algorithm(epilogue):
    spec = make_spec((2, 7, 9, 10, 9, 3, 3, (1, 2, 0, 1), (1, 1), (1, 1), 1), epilogue)
    names = candidates(spec)
    assert {"winograd_f2x2_3x3", "winograd_f4x4_3x3"} <= set(names)
    for name in names:
        check(name, spec)


def test_applicability():
    assert not ALGORITHMS["winograd_f4x4_3x3"].applicable(make_spec(SHAPES[3]))  # stride 2
    assert not ALGORITHMS["winograd_f2x2_3x3"].applicable(make_spec(SHAPES[4]))  # dilation 2
    assert not ALGORITHMS["winograd_f2x2_3x3"].applicable(make_spec(SHAPES[5]))  # groups 2
    assert ALGORITHMS["depthwise_direct"].applicable(make_spec(SHAPES[7]))  # multiplier 2
    assert ALGORITHMS["gemm_1x1"].applicable(make_spec(SHAPES[9]))  # strided 1x1
    assert not ALGORITHMS["gemm_1x1"].applicable(make_spec(SHAPES[0]))
    for shape in SHAPES:
        spec = make_spec(shape)
        assert candidates(spec)[0] == REFERENCE
        assert default_algorithm(spec) in candidates(spec)


@pytest.mark.parametrize("rows_per_chunk", [1, 3, "image", "2 images"])
@pytest.mark.parametrize("index", [1, 3, 4, 12])
def test_chunked_every_chunking(monkeypatch, index, rows_per_chunk):
    """Row bands inside one image, and whole images per chunk, cover every output once."""
    spec = make_spec(SHAPES[index], Epilogue("relu"))
    row_elems = spec.out_w * spec.r * spec.s * spec.c
    images = {"image": 1, "2 images": 2}.get(rows_per_chunk)
    limit = images * spec.out_h * row_elems if images else rows_per_chunk * row_elems
    monkeypatch.setattr(Im2colGemmChunked, "chunk_elems", limit)
    chunks = list(plan_chunks(spec, limit))
    rows = sorted((n, oh) for c in chunks for n in range(c.n0, c.n1) for oh in range(c.oh0, c.oh1))
    assert rows == [(n, oh) for n in range(spec.n) for oh in range(spec.out_h)]
    assert len(chunks) > 1 or spec.n <= (images or 0)
    check("im2col_gemm_chunked", spec, seed=index)
    if ALGORITHMS["im2col_gemm_chunked_parallel"].applicable(spec):
        check("im2col_gemm_chunked_parallel", spec, seed=index)


@pytest.mark.parametrize("name", ["winograd_f2x2_3x3", "winograd_f4x4_3x3", "depthwise_direct"])
def test_image_chunks(monkeypatch, name):
    """With a scratch limit below one batch the algorithm runs a few images at a time."""
    monkeypatch.setattr(Winograd3x3, "region_limit_elems", 1)
    monkeypatch.setattr(Winograd3x3, "min_tiles_per_chunk", 1)
    monkeypatch.setattr(DepthwiseDirect, "chunk_elems", 1)
    shape = SHAPES[6] if name == "depthwise_direct" else SHAPES[1]
    check(name, make_spec(shape, Epilogue("relu")))


ALLOCATION_SHAPES = {
    "gemm_1x1": (4, 32, 64, 64, 64, 1, 1, (0, 0, 0, 0), (2, 2), (1, 1), 1),
    "depthwise_direct": (4, 64, 64, 64, 64, 3, 3, (1, 1, 1, 1), (1, 1), (1, 1), 64),
    "implicit_gemm_map": (128, 32, 3, 4, 256, 3, 3, (1, 1, 1, 1), (1, 1), (1, 1), 1),
    "implicit_gemm_map_1t": (1, 8, 2, 7, 20480, 1, 1, (0, 0, 0, 0), (1, 1), (1, 1), 1),
}


@pytest.mark.parametrize("name", FP32)
def test_steady_state_allocates_nothing(monkeypatch, name):
    """After the first call, a call allocates no array (only NumPy's small copy buffers)."""
    if name.endswith("_1t"):  # where lanes split the base, offered for 1x1 convs only
        monkeypatch.setattr(lanes, "available", lambda: False)
    shape = (4, 32, 64, 64, 64, 3, 3, (1, 1, 1, 1), (1, 1), (1, 1), 1)
    shape = ALLOCATION_SHAPES.get(name.removesuffix("_parallel"), shape)
    spec = make_spec(shape, Epilogue("relu"))
    if not ALGORITHMS[name].applicable(spec):  # im2col_gemm_bands: below the core count
        spec = make_spec(shape, Epilogue("relu"), n=1)
    assert ALGORITHMS[name].applicable(spec)
    x, weight, bias = make_problem(spec)
    algo = ALGORITHMS[name](spec, weight, bias, BACKEND)
    workspace = np.empty(ALGORITHMS[name].workspace_elems(spec), np.float32)
    out = np.empty((spec.n, spec.out_h, spec.out_w, spec.k), np.float32)
    algo(x, out, workspace)
    tracemalloc.start()
    algo(x, out, workspace)
    _, peak_bytes = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert out.nbytes >= 1 << 20
    # NumPy's copy buffers (tens of KiB per thread) pass; a quarter of the output does not
    assert peak_bytes < 1 << 18


def test_blas_threads_restored_after_concurrent_parallel_calls():
    """Two threads inside batch-parallel convs at once leave BLAS's thread count as it was."""
    libraries = blas_libraries()
    if not libraries:
        pytest.skip("threadpoolctl sees no BLAS")
    before = [lib.get_num_threads() for lib in libraries]
    spec = make_spec(SHAPES[1], Epilogue("relu"))
    x, weight, bias = make_problem(spec)
    name = "im2col_gemm_parallel"
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(run_algorithm, name, spec, x, weight, bias, BACKEND) for _ in range(8)]
        outputs = [run.result() for run in runs]
    assert [lib.get_num_threads() for lib in libraries] == before
    assert all(np.array_equal(outputs[0], y) for y in outputs)


@pytest.mark.parametrize(
    ("cpu_max", "cap"),
    [("50000 100000", 1), ("150000 100000", 2), ("max 100000", None), ("junk", None)],
)
def test_cpu_cores_honours_a_cgroup_quota(tmp_path, monkeypatch, cpu_max, cap):
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max)
    monkeypatch.setattr(threads_module, "CGROUP_CPU_MAX", str(path))
    threads_module.cpu_cores.cache_clear()
    try:
        affinity = len(os.sched_getaffinity(0))
        assert threads_module.cpu_cores() == (min(affinity, cap) if cap else affinity)
    finally:
        threads_module.cpu_cores.cache_clear()
