"""The GPU modules import without a GPU (nothing touches CUDA at import time), and the GPU
benchmark says why it cannot run instead of failing with a trace."""

from __future__ import annotations

import subprocess
import sys

import pytest

MODULES = ["engine.bench.cuda", "engine.cuda.cublas", "engine.cuda.graphs",
           "engine.cuda.memory", "engine.cuda.precision", "engine.bench.streamed",
           "engine.backends.cupy_backend"]  # fmt: skip


def test_gpu_modules_import_without_cupy():
    """With CuPy made unimportable, every GPU module still imports (CuPy is looked up late)."""
    code = "import sys; sys.modules['cupy'] = None; sys.modules['cupyx'] = None\n" + "\n".join(
        f"import {name}" for name in MODULES
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_cuda_bench_without_a_device_exits_with_the_reason():
    from tests.conftest import cuda_unavailable_reason

    if cuda_unavailable_reason() is None:
        pytest.skip("a GPU is present: the benchmark would run for real")
    result = subprocess.run(
        [sys.executable, "-m", "engine.bench", "--device", "cuda", "--nets", "cifar",
         "--batch-sizes", "1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "--device cuda:" in result.stderr and "Traceback" not in result.stderr
