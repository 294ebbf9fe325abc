"""The direct cuBLAS path (used inside CUDA graph capture): its row-major to column-major call
arithmetic against a stand-in cuBLAS written in NumPy (no GPU needed), then on a GPU against a
float64 product, inside a real capture, and with the graph runner and streamed transfers."""

from __future__ import annotations

import ctypes
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest

from engine.cuda.cublas import (
    COMPUTE_TYPES,
    OP_N,
    WORKSPACE_BYTES,
    Cublas,
    CublasError,
    linked_library,
)
from engine.cuda.graphs import direct_gemms_while_capturing

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
        self.calls, self.log = [], []  # GEMM shapes; every call's name and arguments, in order

    def cublasGemmStridedBatchedEx(self, handle, op_a, op_b, m, n, k, alpha, a, a_type, lda,
                                   stride_a, b, b_type, ldb, stride_b, beta, c, c_type, ldc,
                                   stride_c, batch, compute, algo):  # fmt: skip
        self.calls.append((op_a, op_b, m, n, k, lda, ldb, ldc, batch))
        self.log.append(("cublasGemmStridedBatchedEx", (compute,)))
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

    def __getattr__(self, name):  # setStream, setWorkspace, pointer mode: accepted, logged
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args: self.log.append((name, args)) or 0


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


def test_every_gemm_runs_on_the_fixed_workspace():
    """cublasSetStream resets a handle's workspace to cuBLAS's default pool (CuPy calls it
    before each of its own GEMMs too): the fixed workspace must be set again after every stream
    switch, or cuBLAS allocates inside a captured graph."""
    rng = random(np.random.default_rng())
    cublas, lib = stand_in_cublas()
    for _ in range(2):
        cublas.matmul(rng((8, 4)), rng((4, 6)))
    names = [name for name, _ in lib.log]
    gemms = [i for i, name in enumerate(names) if name == "cublasGemmStridedBatchedEx"]
    assert len(gemms) == 2, names
    for gemm in gemms:
        stream = max(i for i in range(gemm) if names[i] == "cublasSetStream_v2")
        assert "cublasSetWorkspace_v2" in names[stream:gemm], names
    _, (_, pointer, size) = next(call for call in lib.log if call[0] == "cublasSetWorkspace_v2")
    assert pointer.value == cublas.workspace.ctypes.data and size.value == WORKSPACE_BYTES


def cupy_set_to(compute_type: int, eager_calls: list):
    """A stand-in CuPy whose float32 GEMM compute type is ``compute_type`` (CuPy's numbering)."""
    linalg = SimpleNamespace(COMPUTE_TYPE_FP16=3, COMPUTE_TYPE_FP32=4, COMPUTE_TYPE_TF32=7)
    core = SimpleNamespace(_routines_linalg=linalg, get_compute_type=lambda dtype: compute_type)
    stream = SimpleNamespace(ptr=0, is_capturing=lambda: False)

    def matmul(a, b, out=None):
        eager_calls.append((a.shape, b.shape))
        return np.matmul(a, b, out=out)

    cuda = SimpleNamespace(get_current_stream=lambda: stream)
    return SimpleNamespace(cuda=cuda, _core=core, matmul=matmul, empty=np.empty)


@pytest.mark.parametrize("cupy_type, math", [(3, "fp16"), (7, "tf32"), (1, "fp32")])
def test_eager_gemms_can_take_the_direct_path_at_cupys_precision(cupy_type, math):
    """``always=True`` (the benchmark's TF32/FP16 error): eager GEMMs, batched ones included,
    go to cuBLAS with the compute type CuPy is set to, which CuPy itself applies only partly.
    Without it, an eager GEMM stays CuPy's own."""
    rng = random(np.random.default_rng())
    a, b = rng((16, 37, 19)), rng((19, 23))
    eager_calls = []
    cupy = cupy_set_to(cupy_type, eager_calls)
    cublas, lib = stand_in_cublas()
    with direct_gemms_while_capturing(cupy, cublas, always=True):
        got = cupy.matmul(a, b)
    np.testing.assert_allclose(got, np.matmul(a, b), rtol=1e-5, atol=1e-5)
    computes = [args[0] for name, args in lib.log if name == "cublasGemmStridedBatchedEx"]
    assert computes == [COMPUTE_TYPES[math]] and not eager_calls
    with direct_gemms_while_capturing(cupy, cublas):  # not capturing: CuPy's own
        cupy.matmul(a, b)
    assert len(eager_calls) == 1 and len(lib.calls) == 1


STAND_IN_LIBRARY = 'extern "C" int which_library() { return %d; }'
STAND_IN_EXTENSION = (
    'extern "C" int which_library(); extern "C" int call() { return which_library(); }'
)


def test_cublas_comes_from_the_library_cupys_extension_links(tmp_path):
    """With two copies of a library in the process (PyTorch's libcublas of another CUDA major
    beside CuPy's), symbols looked up through CuPy's extension module come from the copy that
    extension is linked against: CuPy's handle is only valid there."""
    from tests.engine.cuda_emulator import compiler

    if compiler() is None:
        pytest.skip("no host C++ compiler")

    def build(name: str, code: str, *flags: str):
        (tmp_path / f"{name}.cpp").write_text(code)
        output = tmp_path / name
        subprocess.run([compiler(), "-shared", "-fPIC", "-o", str(output),
                        str(tmp_path / f"{name}.cpp"), *flags], check=True)  # fmt: skip
        return output

    (tmp_path / "other").mkdir()
    (tmp_path / "linked").mkdir()
    other = build("other/libstandin.so.12", STAND_IN_LIBRARY % 12, "-Wl,-soname,libstandin.so.12")
    build("linked/libstandin.so.13", STAND_IN_LIBRARY % 13, "-Wl,-soname,libstandin.so.13")
    extension = build("extension.so", STAND_IN_EXTENSION, f"-L{tmp_path / 'linked'}",
                      "-l:libstandin.so.13", f"-Wl,-rpath,{tmp_path / 'linked'}")  # fmt: skip
    assert ctypes.CDLL(str(other)).which_library() == 12  # loaded first, like PyTorch's
    assert linked_library(str(extension)).which_library() == 13


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
    stream.wait_event(cupy.cuda.get_current_stream().record())  # a non-blocking stream
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
    from engine.bench.streamed import StreamedRunner

    model = load_model(cifar_path, "cuda", (1, 4, 8), autotune_mode="off")
    rng = np.random.default_rng()
    batches = [rng.standard_normal((n, 3, 32, 32)).astype(np.float32) for n in (8, 3, 8, 1, 8)]
    runner = StreamedRunner(model, model.backend.execute)
    # every batch first: while map() runs, its next batch is in flight on the model's buffers,
    # and a model(x) between two of its yields would race with it
    streamed = list(runner.map(batches))
    for got, x in zip(streamed, batches, strict=True):
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
