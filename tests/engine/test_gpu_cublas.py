"""The direct cuBLAS path (used inside CUDA graph capture): its row-major to column-major call
arithmetic against a stand-in cuBLAS written in NumPy (no GPU needed), then on a GPU against a
float64 product, inside a real capture, and with the graph runner and streamed transfers."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from engine.cuda.cublas import OP_N, Cublas, CublasError

SHAPES = {  # name -> (a, b) builders from an rng; views as the engine passes them
    "plain": lambda r: (r((37, 19)), r((19, 23))),
    "a transposed": lambda r: (r((19, 37)).T, r((19, 23))),
    "b transposed": lambda r: (r((37, 19)), r((23, 19)).T),
    "both transposed": lambda r: (r((19, 37)).T, r((23, 19)).T),
    "row vector": lambda r: (r((1, 19)), r((19, 23))),
    "one column": lambda r: (r((37, 19)), r((19, 1))),
    "group slice": lambda r: (r((37, 3, 19))[:, 1, :], r((19, 23))),
    "batched": lambda r: (r((16, 37, 19)), r((16, 19, 23))),
    "broadcast a": lambda r: (r((37, 19)), r((16, 19, 23))),
    "broadcast b": lambda r: (r((16, 37, 19)), r((19, 23))),
}


def column_major(pointer: int, rows: int, cols: int, ld: int) -> np.ndarray:
    """A (rows, cols) view of float32 memory stored column-major with leading dimension ld."""
    count = ld * (cols - 1) + rows
    flat = np.ctypeslib.as_array((ctypes.c_float * count).from_address(pointer))
    return np.lib.stride_tricks.as_strided(flat, (rows, cols), (4, 4 * ld))


def stored(pointer: int, op: int, rows: int, cols: int, ld: int) -> np.ndarray:
    """op(X) of size (rows, cols) for a matrix X stored column-major at ``pointer``."""
    if op == OP_N:
        return column_major(pointer, rows, cols, ld)
    return column_major(pointer, cols, rows, ld).T


class StandInCublas:
    """cublasGemmStridedBatchedEx as the cuBLAS documentation defines it, in NumPy."""

    def __init__(self):
        self.calls = []

    def cublasGemmStridedBatchedEx(self, handle, op_a, op_b, m, n, k, alpha, a, a_type, lda,
                                   stride_a, b, b_type, ldb, stride_b, beta, c, c_type, ldc,
                                   stride_c, batch, compute, algo):  # fmt: skip
        self.calls.append((op_a, op_b, m, n, k, lda, ldb, ldc, batch))
        assert lda >= (m if op_a == OP_N else k) and ldb >= (k if op_b == OP_N else n)
        assert ldc >= m
        for i in range(batch):
            left = stored(a.value + 4 * i * stride_a.value, op_a, m, k, lda)
            right = stored(b.value + 4 * i * stride_b.value, op_b, k, n, ldb)
            out = column_major(c.value + 4 * i * stride_c.value, m, n, ldc)
            product = alpha._obj.value * (left @ right)
            beta_value = beta._obj.value  # beta == 0: C is not read (it may hold NaN)
            out[...] = product + beta_value * out if beta_value else product
        return 0

    def __getattr__(self, name):  # setStream, setWorkspace, pointer mode: accepted
        return lambda *args: 0


class Stream:
    ptr = 0


class StandInCupy:
    class cuda:
        @staticmethod
        def get_current_stream():
            return Stream()

    empty = staticmethod(np.empty)


def stand_in_cublas() -> tuple[Cublas, StandInCublas]:
    cublas = Cublas.__new__(Cublas)
    cublas.cupy, cublas.handle, cublas.lib = StandInCupy(), 1, StandInCublas()
    cublas.workspace = np.empty(16, np.uint8)
    cublas._alpha, cublas._beta = ctypes.c_float(1.0), ctypes.c_float(0.0)
    return cublas, cublas.lib


def random(rng):
    return lambda shape: rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("case", sorted(SHAPES))
def test_call_arithmetic_matches_matmul(case):
    a, b = SHAPES[case](random(np.random.default_rng()))
    cublas, lib = stand_in_cublas()
    got = cublas.matmul(a, b)
    np.testing.assert_allclose(got, np.matmul(a, b), rtol=1e-5, atol=1e-5)
    assert len(lib.calls) == 1  # one call, batched when there is a batch


def test_writes_into_a_column_slice_of_a_wider_output():
    """grouped_gemm writes each group's GEMM into out2d[:, g*kg:(g+1)*kg]."""
    rng = random(np.random.default_rng())
    a, b = rng((37, 19)), rng((19, 5))
    wide = np.full((37, 15), 7.0, np.float32)
    cublas, _ = stand_in_cublas()
    cublas.matmul(a, b, wide[:, 5:10])
    np.testing.assert_allclose(wide[:, 5:10], a @ b, rtol=1e-5, atol=1e-5)
    assert (wide[:, :5] == 7).all() and (wide[:, 10:] == 7).all()


def test_refuses_what_it_cannot_express():
    rng = random(np.random.default_rng())
    cublas, _ = stand_in_cublas()
    with pytest.raises(CublasError):
        cublas.matmul(rng((8, 6, 4))[:, ::2, ::2], rng((2, 3)))  # no unit stride
    with pytest.raises(CublasError):
        cublas.matmul(rng((4, 3)), rng((4, 3)))  # inner sizes differ
    with pytest.raises(CublasError):
        cublas.matmul(rng((4, 3)), rng((3, 5)), np.empty((5, 4), np.float32).T)


# on a GPU --------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("case", sorted(SHAPES))
@pytest.mark.parametrize("math", ["fp32", "tf32"])
def test_direct_gemm_matches_float64(cuda_backend, case, math):
    cupy = cuda_backend.xp
    a, b = SHAPES[case](random(np.random.default_rng()))
    got = Cublas.shared(cupy).matmul(cupy.asarray(a), cupy.asarray(b), math=math)
    expected = np.matmul(a.astype(np.float64), b.astype(np.float64))
    error = np.linalg.norm(cupy.asnumpy(got) - expected) / np.linalg.norm(expected)
    assert error < (1e-6 if math == "fp32" else 5e-3)


@pytest.mark.gpu
def test_gemm_inside_a_captured_graph(cuda_backend):
    from engine.cuda.graphs import direct_gemms_while_capturing

    cupy = cuda_backend.xp
    rng = random(np.random.default_rng())
    a, b = cupy.asarray(rng((64, 48))), cupy.asarray(rng((48, 32)))
    out = cupy.empty((64, 32), np.float32)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream, direct_gemms_while_capturing(cupy, Cublas.shared(cupy)):
        stream.begin_capture()
        cupy.matmul(a, b, out=out)
        out += 1
        graph = stream.end_capture()
    a[...] = cupy.asarray(rng((64, 48)))  # the replay reads the new values
    graph.launch(stream)
    stream.synchronize()
    expected = cupy.asnumpy(a) @ cupy.asnumpy(b) + 1
    np.testing.assert_allclose(cupy.asnumpy(out), expected, rtol=1e-5, atol=1e-4)


@pytest.fixture
def cifar_path(tmp_path):
    from engine.bench.nets import cifar_net

    path = tmp_path / "cifar.onnx"
    path.write_bytes(cifar_net().SerializeToString())
    return path


@pytest.mark.gpu
def test_every_bucket_is_captured(cuda_backend, cifar_path):
    from engine import load_model

    model = load_model(cifar_path, "cuda", (1, 8), autotune_mode="off", cuda_graphs=True)
    cpu = load_model(cifar_path, "cpu", (1, 8), autotune_mode="off")
    x = np.random.default_rng().standard_normal((8, 3, 32, 32)).astype(np.float32)
    for n in (1, 8, 5):
        assert np.linalg.norm(model(x[:n]) - cpu(x[:n])) / np.linalg.norm(cpu(x[:n])) < 1e-5
    info = model.backend.graphs.info()
    assert info["failures"] == [] and info["graphs"] + info["eager"] == 2, info


@pytest.mark.gpu
def test_streamed_batches_match_one_by_one(cuda_backend, cifar_path):
    from engine import load_model
    from engine.cuda.transfer import StreamedRunner

    model = load_model(cifar_path, "cuda", (1, 4, 8), autotune_mode="off")
    rng = np.random.default_rng()
    batches = [rng.standard_normal((n, 3, 32, 32)).astype(np.float32) for n in (8, 3, 8, 1, 8)]
    runner = StreamedRunner(model, model.backend.execute)
    for got, x in zip(runner.map(batches), batches, strict=True):
        np.testing.assert_allclose(got, model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_tuner_never_picks_tf32_unless_allowed(cuda_backend, cifar_path):
    from engine import load_model

    model = load_model(cifar_path, "cuda", (1, 8), autotune_mode="force", allow_tf32=False)
    algorithms = {layer["algorithm"] for layer in model.info()["layers"] if layer["algorithm"]}
    assert algorithms and not any("tf32" in name for name in algorithms), algorithms


@pytest.mark.gpu
def test_enum_values_match_cupys(cuda_backend):
    from cupy_backends.cuda.libs import cublas

    from engine.cuda import cublas as direct

    assert direct.COMPUTE_TYPES == {"fp32": cublas.CUBLAS_COMPUTE_32F,
                                    "tf32": cublas.CUBLAS_COMPUTE_32F_FAST_TF32,
                                    "fp16": cublas.CUBLAS_COMPUTE_32F_FAST_16F}  # fmt: skip
    assert (direct.OP_N, direct.OP_T) == (cublas.CUBLAS_OP_N, cublas.CUBLAS_OP_T)
    assert direct.CUDA_R_32F == cuda_backend.xp.cuda.runtime.CUDA_R_32F
