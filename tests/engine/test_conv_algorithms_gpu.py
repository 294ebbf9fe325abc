"""Every conv algorithm on CuPy against the same algorithm on NumPy and the float64 reference."""

from __future__ import annotations

import pytest

from engine.autotune import Autotuner
from engine.backends import NumpyBackend, resolve_backend
from engine.conv import ALGORITHMS, Epilogue
from engine.errors import DeviceUnavailableError
from tests.engine.conv_cases import SHAPES, make_problem, make_spec, reference_nhwc, run_algorithm
from tests.engine.reference import rel_error

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda():
    try:
        return resolve_backend("cuda")
    except DeviceUnavailableError as error:
        pytest.skip(f"no GPU: {error}")


@pytest.mark.parametrize("index", range(len(SHAPES)))
@pytest.mark.parametrize("name", sorted(n for n, a in ALGORITHMS.items() if "cuda" in a.devices))
def test_cupy_matches_numpy_and_reference(cuda, name, index):
    spec = make_spec(SHAPES[index], Epilogue("relu"))
    if not ALGORITHMS[name].applicable(spec):
        pytest.skip(f"{name} does not apply to shape {index}")
    x, weight, bias = make_problem(spec, seed=index)
    y_gpu = run_algorithm(name, spec, x, weight, bias, cuda)
    tol = ALGORITHMS[name].tolerance
    assert rel_error(y_gpu, reference_nhwc(spec, x, weight, bias)) < tol
    if ALGORITHMS[name].math == "fp32":
        y_cpu = run_algorithm(name, spec, x, weight, bias, NumpyBackend())
        assert rel_error(y_gpu, y_cpu) < tol


def test_tf32_offered_only_when_allowed(cuda):
    spec = make_spec(SHAPES[13])
    _, weight, bias = make_problem(spec)
    strict = Autotuner(cuda).choose(spec, weight, bias)
    assert "im2col_gemm_tf32" not in {strict.algorithm.name, *strict.runners_up}
    tuner = Autotuner(cuda, allow_tf32=True)
    loose = tuner.choose(spec, weight, bias)
    assert "im2col_gemm_tf32" in {loose.algorithm.name, *loose.runners_up}
    assert tuner.key(spec) != spec.key()
