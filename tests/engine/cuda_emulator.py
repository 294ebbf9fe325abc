"""Run the engine's CUDA kernels on the CPU: each source is compiled by the host C++ compiler
with the CUDA built-ins (blockIdx, threadIdx, ...) defined as globals, and a launcher per kernel
loops over every (block, thread) of the grid the backend asked for.

That is exact for these kernels: no shared memory, no __syncthreads, every thread independent
(grid-stride loops). It checks the index arithmetic, the numerics and the Python-side argument
marshalling (each scalar's NumPy type must match the C parameter's width, as CuPy requires)
on machines without a GPU. ``EmulatedCupyBackend`` is the CuPy backend with NumPy arrays and
these launchers in place of RawKernels.
"""

from __future__ import annotations

import ctypes
import hashlib
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from engine.backends.base import Backend
from engine.backends.cupy_backend import CupyBackend, kernel_source

KERNEL_DIR = Path(__file__).resolve().parents[2] / "engine" / "kernels"
SIGNATURE = re.compile(r'extern "C" __global__ void (\w+)\(([^)]*)\)')

PRELUDE = """
#include <math.h>
#include <string.h>
#include <algorithm>
using std::max;
using std::min;
struct EmuDim { unsigned int x, y, z; };
static EmuDim blockIdx, blockDim, threadIdx, gridDim;
#define __global__
#define __device__
#define __forceinline__ inline
static inline float __int_as_float(int bits) { float f; memcpy(&f, &bits, 4); return f; }
"""

# C parameter type -> (ctypes type, NumPy scalar type the caller must pass)
PARAM_TYPES = {
    "int": (ctypes.c_int, np.int32),
    "long long": (ctypes.c_longlong, np.int64),
    "float": (ctypes.c_float, np.float32),
}


def parse_params(params: str) -> list[tuple[str, str]]:
    """[(type, name)] of a C parameter list; pointer types come back as "ptr"."""
    parsed = []
    for param in params.split(","):
        words = param.replace("__restrict__", " ").replace("*", " * ").split()
        name = words[-1]
        kind = "ptr" if "*" in words else " ".join(w for w in words[:-1] if w != "const")
        parsed.append((kind, name))
    return parsed


def kernels_in(source: str) -> dict[str, list[tuple[str, str]]]:
    return {name: parse_params(params) for name, params in SIGNATURE.findall(source)}


def launcher(name: str, params: list[tuple[str, str]], text: str) -> str:
    """A C function running kernel ``name`` over a whole 1-D grid, block by block."""
    signature = text.split(f"{name}(", 1)[1].split(")", 1)[0]
    arguments = ", ".join(p for _, p in params)
    return f"""
extern "C" void emulate_{name}(unsigned int grid, unsigned int block, {signature}) {{
  gridDim = {{grid, 1, 1}}; blockDim = {{block, 1, 1}};
  for (unsigned int b = 0; b < grid; ++b) {{
    blockIdx = {{b, 0, 0}};
    for (unsigned int t = 0; t < block; ++t) {{ threadIdx = {{t, 0, 0}}; {name}({arguments}); }}
  }}
}}
"""


class EmulatedKernel:
    """Called like a CuPy RawKernel: ``kernel(grid, block, args)``."""

    def __init__(self, function, params):
        self.function, self.params = function, params
        function.restype = None
        function.argtypes = [ctypes.c_uint, ctypes.c_uint] + [
            ctypes.c_void_p if kind == "ptr" else PARAM_TYPES[kind][0] for kind, _ in params
        ]

    def __call__(self, grid, block, args):
        assert len(grid) == 1 and len(block) == 1, "the kernels use 1-D launches"
        assert len(args) == len(self.params), f"{len(args)} arguments for {self.params}"
        values = []
        for (kind, name), arg in zip(self.params, args):
            if kind == "ptr":
                assert isinstance(arg, np.ndarray), f"{name}: expected an array, got {type(arg)}"
                values.append(arg.ctypes.data)
            else:
                expected = PARAM_TYPES[kind][1]
                assert type(arg) is expected, f"{name}: {kind} needs {expected}, got {type(arg)}"
                values.append(arg)
        self.function(int(grid[0]), int(block[0]), *values)


def build(source_names: list[str], workdir: Path) -> dict[str, EmulatedKernel]:
    """Compile each named kernel source (as CuPy receives it) into its own shared library:
    one translation unit per source, as NVRTC compiles them."""
    kernels = {}
    for source in source_names:
        text = kernel_source(source)
        found = kernels_in(text)
        code = "\n".join([PRELUDE, text, *(launcher(n, p, text) for n, p in found.items())])
        lib = ctypes.CDLL(str(compile_library(code, workdir)))
        for name, params in found.items():
            kernels[name] = EmulatedKernel(getattr(lib, f"emulate_{name}"), params)
    return kernels


def compile_library(code: str, workdir: Path) -> Path:
    digest = hashlib.sha256(code.encode()).hexdigest()[:16]
    library = workdir / f"emulated_{digest}.so"
    if not library.exists():
        (workdir / f"{digest}.cpp").write_text(code)
        subprocess.run(
            [compiler(), "-O2", "-shared", "-fPIC", "-std=c++17", "-o", str(library),
             str(workdir / f"{digest}.cpp")],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
    return library


def compiler() -> str | None:
    return shutil.which("g++") or shutil.which("clang++")


class EmulatedCupyBackend(CupyBackend):
    """CupyBackend's kernel methods on NumPy arrays, each launch run by the emulator."""

    name = "cupy-emulated"
    xp = np

    def __init__(self, workdir: Path | None = None):
        workdir = workdir or Path(tempfile.mkdtemp(prefix="gemmserve-emu-"))
        sources = sorted(p.name for p in KERNEL_DIR.glob("*.cu"))
        self._kernels = build(sources, workdir)
        self.launches: list[str] = []

    def kernel(self, source: str, name: str):
        self.launches.append(name)
        return self._kernels[name]

    execute = Backend.execute
    to_host = Backend.to_host
    copy_to = Backend.copy_to
    synchronize = Backend.synchronize
    is_out_of_memory = Backend.is_out_of_memory

    def fingerprint(self) -> dict:
        return {"device": "cuda-emulated"}
