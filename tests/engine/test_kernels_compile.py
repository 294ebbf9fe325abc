"""Every CUDA source compiles for sm_90, and every kernel the Python code launches exists."""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from engine.backends.cupy_backend import CupyBackend, kernel_source
from tests.engine.cuda_emulator import KERNEL_DIR, kernels_in

ENGINE_DIR = KERNEL_DIR.parent
SOURCES = sorted(p.name for p in KERNEL_DIR.glob("*.cu"))
# launch("file.cu", "kernel", ...) / kernel("file.cu", "kernel"): how the backend names kernels
LAUNCH = re.compile(r'(?:launch|kernel)\(\s*"([\w.]+\.cu)",\s*"(\w+)"')


def launched_kernels() -> set[tuple[str, str]]:
    found = set()
    for path in ENGINE_DIR.rglob("*.py"):
        found.update(LAUNCH.findall(path.read_text(encoding="utf-8")))
    return found


def test_sources_exist():
    assert {"im2col.cu", "epilogue.cu", "pool.cu", "depthwise.cu", "winograd.cu"} <= set(SOURCES)


@pytest.mark.parametrize("source", SOURCES)
def test_compiles_for_sm90(source, tmp_path):
    """nvcc compiles the text CuPy receives (headers inlined), with no warning."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not installed")
    cu = tmp_path / source
    cu.write_text(kernel_source(source))
    result = subprocess.run(
        [nvcc, "-arch=sm_90", "-c", str(cu), "-o", str(tmp_path / "out.o")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr.lower(), result.stderr


def nvrtc_library() -> str | None:
    """libnvrtc from the nvidia-cuda-nvrtc wheel, the system, or a CUDA toolkit; None if absent."""
    try:
        import nvidia.cuda_nvrtc

        found = glob.glob(f"{nvidia.cuda_nvrtc.__path__[0]}/lib/libnvrtc.so*")
    except ImportError:
        found = []
    found += [ctypes.util.find_library("nvrtc") or ""]
    found += glob.glob("/usr/local/cuda*/lib64/libnvrtc.so*")
    return next((path for path in found if path and "builtins" not in path), None)


def nvrtc_compile(library: str, source: str, name: str) -> tuple[int, str]:
    """(status, log) of NVRTC compiling ``source`` for compute_90, as CuPy does at first launch."""
    nvrtc = ctypes.CDLL(library)
    program = ctypes.c_void_p()
    nvrtc.nvrtcCreateProgram(ctypes.byref(program), source.encode(), name.encode(), 0, None, None)
    options = (ctypes.c_char_p * 1)(b"--gpu-architecture=compute_90")
    status = nvrtc.nvrtcCompileProgram(program, 1, options)
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(program, log)
    nvrtc.nvrtcDestroyProgram(ctypes.byref(program))
    return status, log.value.decode(errors="replace")


@pytest.mark.parametrize("source", SOURCES)
def test_compiles_with_nvrtc(source):
    """NVRTC, CuPy's compiler, is stricter than nvcc: no host headers (e.g. no INFINITY)."""
    library = nvrtc_library()
    if library is None:
        pytest.skip("libnvrtc not found (pip install nvidia-cuda-nvrtc-cu12 to run this here)")
    status, log = nvrtc_compile(library, kernel_source(source), source)
    assert status == 0, log


def test_headers_compile_in_place(tmp_path):
    """The files as stored (with #include of the shared header) compile too."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not installed")
    result = subprocess.run(
        [nvcc, "-arch=sm_90", "-I", str(KERNEL_DIR), "--cubin", str(KERNEL_DIR / "pool.cu"),
         "-o", str(tmp_path / "pool.cubin")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_every_launched_kernel_is_defined():
    launched = launched_kernels()
    assert len(launched) >= 6, launched
    for source, name in sorted(launched):
        assert (KERNEL_DIR / source).exists(), f"{source} (kernel {name}) is not in engine/kernels"
        assert name in kernels_in(kernel_source(source)), f'no extern "C" __global__ {name}'


def test_every_defined_kernel_is_launched():
    launched = {name for _, name in launched_kernels()}
    for source in SOURCES:
        for name in kernels_in(kernel_source(source)):
            assert name in launched, f"{source}: kernel {name} is never launched"


def test_headers_are_shipped():
    """Kernels include only headers that exist, and pyproject ships them with the package."""
    pyproject = (ENGINE_DIR.parent / "pyproject.toml").read_text(encoding="utf-8")
    for source in SOURCES:
        for header in re.findall(r'#include "([\w.]+)"', (KERNEL_DIR / source).read_text()):
            assert (KERNEL_DIR / header).exists(), header
            assert f"kernels/*{Path(header).suffix}" in pyproject, f"{header} not in package-data"


def test_backend_compiles_every_kernel_before_any_launch():
    """CupyBackend compiles all kernels when it is made, so that no NVRTC compile lands inside
    a timed autotune run (stand-in RawKernel: no GPU needed)."""
    compiled = []

    class RawKernel:
        def __init__(self, code: str, name: str):
            self.code, self.name = code, name

        def compile(self):
            assert f" {self.name}(" in self.code
            compiled.append(self.name)

    backend = CupyBackend.__new__(CupyBackend)
    backend.xp, backend._kernels = type("StandInCupy", (), {"RawKernel": RawKernel}), {}
    backend.compile_kernels()
    defined = {name for source in SOURCES for name in kernels_in(kernel_source(source))}
    assert sorted(compiled) == sorted(defined) and len(defined) >= 6
