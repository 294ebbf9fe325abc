"""Suite-wide hooks: ``gpu``-marked tests skip cleanly where CuPy or a CUDA device is missing;
the backends that run the CUDA kernels (a GPU, or their CPU emulator)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

#: numba's compiled kernels, shared by every test and every process the tests start (they
#: inherit the environment), and kept between runs: only the first run compiles
KERNEL_CACHE = Path(__file__).resolve().parent.parent / ".pytest_cache" / "gemmserve-kernels"


def pytest_configure(config):
    os.environ.setdefault("GEMMSERVE_KERNEL_CACHE", str(KERNEL_CACHE))


@functools.cache
def cuda_unavailable_reason() -> str | None:
    """Why no GPU test can run here (None when one can); asks CuPy once, touches nothing else."""
    from engine.backends.cupy_backend import import_cupy
    from engine.errors import DeviceUnavailableError

    try:
        import_cupy()
    except DeviceUnavailableError as error:
        return str(error)
    return None


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_items and cuda_unavailable_reason():
        skip = pytest.mark.skip(reason=f"gpu: {cuda_unavailable_reason()}")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cuda_backend():
    """The CuPy backend on the first visible GPU (tests using it carry the ``gpu`` marker)."""
    from engine.backends.cupy_backend import CupyBackend

    if cuda_unavailable_reason():
        pytest.skip(f"gpu: {cuda_unavailable_reason()}")
    return CupyBackend()


@pytest.fixture(scope="session")
def emulated(tmp_path_factory):
    """The CuPy backend's kernel methods on NumPy arrays, kernels run by the CPU emulator
    (tests/engine/cuda_emulator.py); compiled once per session."""
    from tests.engine.cuda_emulator import EmulatedCupyBackend, compiler

    if compiler() is None:
        pytest.skip("no host C++ compiler to emulate the CUDA kernels")
    return EmulatedCupyBackend(tmp_path_factory.mktemp("kernels"))


@pytest.fixture(params=["emulated", pytest.param("cuda", marks=pytest.mark.gpu)])
def emu(request):
    """A backend whose CUDA kernels really run: the emulator (xp = numpy) or a GPU (xp = cupy)."""
    return request.getfixturevalue("emulated" if request.param == "emulated" else "cuda_backend")
