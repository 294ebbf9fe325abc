"""Suite-wide hooks: ``gpu``-marked tests skip cleanly where CuPy or a CUDA device is missing."""

from __future__ import annotations

import functools

import pytest


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
