"""The NVIDIA GPU backend: CuPy arrays, cuBLAS GEMMs, and RawKernels where one launch beats the
array code (the gather, the fused epilogue, pooling, depthwise conv, Winograd transforms).

Each kernel method marshals its arguments as explicitly typed NumPy scalars (``int`` parameters
as ``np.int32``, ``long long`` as ``np.int64``): CuPy passes them by value as they are, so a
wrong width would be read as garbage on the device. Inputs may be strided views with contiguous
channels (their N/H/W strides are passed); outputs must be contiguous.
"""

from __future__ import annotations

import re
from importlib import resources

import numpy as np

from engine.activations import ACTIVATIONS
from engine.backends.base import Backend
from engine.errors import DeviceUnavailableError

THREADS_PER_BLOCK = 256
#: enough blocks to fill any current GPU; the kernels' grid-stride loops cover the rest
MAX_BLOCKS = 1 << 16
_INCLUDE = re.compile(r'^#include "([\w.]+\.cuh)"$', re.MULTILINE)
_KERNEL = re.compile(r'extern "C" __global__ void (\w+)\(')


def kernel_source(name: str) -> str:
    """The text of a CUDA source shipped in ``engine/kernels``, local headers inlined (NVRTC
    then needs no include path, and the text is what the source hash covers)."""
    files = resources.files("engine.kernels")
    text = files.joinpath(name).read_text(encoding="utf-8")
    inline = lambda m: files.joinpath(m.group(1)).read_text(encoding="utf-8")  # noqa: E731
    return _INCLUDE.sub(inline, text)


def shipped_kernels() -> list[tuple[str, str]]:
    """(source file, kernel name) of every kernel in ``engine/kernels``."""
    sources = sorted(p.name for p in resources.files("engine.kernels").iterdir())
    return [(source, name) for source in sources if source.endswith(".cu")
            for name in _KERNEL.findall(kernel_source(source))]  # fmt: skip


def import_cupy():
    """CuPy with at least one visible device, or DeviceUnavailableError."""
    try:
        import cupy
    except ImportError as error:
        raise DeviceUnavailableError("device 'cuda' needs CuPy (pip install '.[gpu]')") from error
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # CUDA driver missing or broken: CuPy raises its own types
        raise DeviceUnavailableError(f"no usable CUDA device: {error}") from error
    if count == 0:
        raise DeviceUnavailableError("no CUDA device visible")
    return cupy


def blocks_for(total: int) -> int:
    return max(1, min(-(-total // THREADS_PER_BLOCK), MAX_BLOCKS))


def i32(*values) -> tuple:
    return tuple(np.int32(v) for v in values)


def i64(*values) -> tuple:
    return tuple(np.int64(v) for v in values)


def nhw_strides(x) -> tuple:
    """(sn, sh, sw) of a 4-D NHWC float32 array in elements; channels must be contiguous."""
    if x.ndim != 4 or x.dtype != np.float32 or (x.shape[3] > 1 and x.strides[3] != 4):
        raise ValueError(f"expected NHWC float32 with contiguous channels, got {x.shape} "
                         f"{x.dtype} strides {x.strides}")  # fmt: skip
    return i64(*(s // 4 for s in x.strides[:3]))


def activation_args(epilogue) -> tuple:
    kind = ACTIVATIONS.index(epilogue.kind)
    return np.int32(kind), np.float32(epilogue.alpha), np.float32(epilogue.beta)


def require_contiguous(*arrays) -> None:
    for array in arrays:
        if not array.flags.c_contiguous:
            raise ValueError(f"kernel output must be contiguous, got strides {array.strides}")


class CupyBackend(Backend):
    name = "cupy"
    device = "cuda"
    native_pool = True
    native_depthwise = True
    native_winograd_f2x2 = True

    def __init__(self, cuda_graphs: bool = True):
        from engine.cuda.graphs import GraphRunner

        self.xp = import_cupy()
        self._kernels: dict[str, object] = {}
        self._staging: dict[int, tuple] = {}  # destination address -> (pinned bytes, copy event)
        self.graphs = GraphRunner(self, enabled=cuda_graphs)
        self.compile_kernels()

    def execute(self, plan) -> list:
        """Graph replay where capture succeeded and is faster, eager execution otherwise."""
        return self.graphs.execute(plan)

    def kernel(self, source: str, name: str):
        """The compiled RawKernel ``name`` of ``engine/kernels/<source>`` (compiled once)."""
        if name not in self._kernels:
            self._kernels[name] = self.xp.RawKernel(kernel_source(source), name)
        return self._kernels[name]

    def compile_kernels(self) -> None:
        """Compile every kernel now (NVRTC, or CuPy's on-disk cache) instead of at its first
        launch: the autotuner's first run of a candidate is timed, and a first NVRTC compile
        (hundreds of ms on a fresh machine) would rule out the candidate that launches it first
        (Winograd's or depthwise's own kernels), for good in the autotune cache."""
        for source, name in shipped_kernels():
            self.kernel(source, name).compile()

    def launch(self, source: str, name: str, total: int, args: tuple) -> None:
        if total > 0:
            self.kernel(source, name)((blocks_for(total),), (THREADS_PER_BLOCK,), args)

    # memory and time ---------------------------------------------------------------------
    def to_host(self, array) -> np.ndarray:
        return self.xp.asnumpy(array)

    def copy_to(self, dst, src_host: np.ndarray) -> None:
        """Host -> device through a pinned staging buffer kept per destination (a bucket's input
        buffer): the DMA reads page-locked memory directly, at full PCIe/NVLink speed."""
        # keyed by the destination's address: a bucket's input gets one buffer whatever the
        # batch (staged[:n] for every n), grown only if a larger copy ever comes
        buffer, copied = self._staging.get(dst.data.ptr, (None, None))
        if copied is not None:
            copied.synchronize()  # the previous copy from this buffer has been read
        if buffer is None or buffer.nbytes < dst.nbytes:
            import cupyx

            buffer = cupyx.empty_pinned(dst.nbytes, np.uint8)
        staging = buffer[: dst.nbytes].view(dst.dtype).reshape(dst.shape)
        np.copyto(staging, src_host, casting="same_kind")
        stream = self.xp.cuda.get_current_stream()
        dst.set(staging, stream=stream)  # asynchronous, ordered before the work queued next
        self._staging[dst.data.ptr] = (buffer, stream.record())

    def memory(self) -> dict[str, int]:
        """Device and memory-pool bytes, for the service's device-memory gauges."""
        from engine.cuda.memory import device_memory

        return device_memory(self.xp)

    def synchronize(self) -> None:
        self.xp.cuda.get_current_stream().synchronize()

    def is_out_of_memory(self, error: BaseException) -> bool:
        from engine.cuda.memory import is_out_of_memory

        return is_out_of_memory(self.xp, error)

    # kernels -----------------------------------------------------------------------------
    def im2col(self, x, cols, spec, padded) -> None:
        """The gather, padding handled inside the kernel (``padded`` is not needed)."""
        require_contiguous(cols)
        if spec.n * spec.out_h * spec.out_w >= 2**31:  # the kernel indexes rows in 32 bits
            raise ValueError(f"{spec.n * spec.out_h * spec.out_w} GEMM rows exceed 2^31")
        args = (x, cols, np.int64(cols.size), *nhw_strides(x))
        args += i32(spec.h, spec.w, spec.out_h, spec.out_w, spec.groups, spec.r, spec.s,
                    spec.c_per_group, spec.pads[0], spec.pads[1], *spec.strides,
                    *spec.dilations)  # fmt: skip
        self.launch("im2col.cu", "im2col_nhwc", cols.size, args)

    def epilogue(self, y2d, bias, epilogue) -> None:
        """Bias and activation in one pass over the (rows, K) output."""
        require_contiguous(y2d)
        has_bias = bias is not None
        args = (y2d, bias if has_bias else y2d, np.int64(y2d.size), *i32(y2d.shape[-1], has_bias))
        self.launch("epilogue.cu", "bias_activation", y2d.size, args + activation_args(epilogue))

    def pool(self, x, out, kind, kernel, strides, dilations, pads, count_include_pad) -> None:
        """MaxPool (``kind="max"``) or AveragePool over NHWC ``x`` into ``out`` (N, OH, OW, C);
        ``pads`` are (top, left, bottom, right); ceil_mode is already in ``out``'s size."""
        require_contiguous(out)
        n, oh, ow, c = out.shape
        args = (x, out, np.int64(out.size), *nhw_strides(x))
        args += i32(x.shape[1], x.shape[2], c, oh, ow, *kernel, *strides, *dilations, *pads,
                    kind == "max", count_include_pad)  # fmt: skip
        self.launch("pool.cu", "pool_nhwc", out.size, args)

    def depthwise(self, x, taps, bias, out, spec) -> None:
        """Depthwise conv with the bias and ``spec.epilogue`` fused; ``taps`` is (R, S, K)
        contiguous, output channel ``c * multiplier + j`` reading input channel ``c``."""
        require_contiguous(out, taps)
        args = (x, taps, bias, out, np.int64(out.size), *nhw_strides(x))
        args += i32(spec.h, spec.w, spec.out_h, spec.out_w, spec.k, spec.r, spec.s,
                    spec.k // spec.c, spec.pads[0], spec.pads[1], *spec.strides,
                    *spec.dilations, True)  # fmt: skip
        args += activation_args(spec.epilogue)
        self.launch("depthwise.cu", "depthwise_nhwc", out.size, args)

    def winograd_f2x2_input(self, x, v, spec) -> None:
        """V (16, tiles, C) = B^T d B of every 4x4 tile of NHWC ``x``, zero outside the image;
        tiles are (n, tile row, tile column) with ceil(OH / 2) x ceil(OW / 2) per image."""
        require_contiguous(v)
        th, tw = -(-spec.out_h // 2), -(-spec.out_w // 2)
        total = x.shape[0] * th * tw * spec.c
        args = (x, v, np.int64(total), *nhw_strides(x))
        args += i32(spec.h, spec.w, spec.c, th, tw, spec.pads[0], spec.pads[1])
        self.launch("winograd.cu", "winograd_f2x2_input", total, args)

    def winograd_f2x2_output(self, m, bias, out, spec) -> None:
        """out (N, OH, OW, K) = A^T M A per tile of M (16, tiles, K), plus bias and activation
        (``bias=None``: neither, the caller applies its epilogue)."""
        require_contiguous(m, out)
        n, oh, ow, k = out.shape
        th, tw = -(-oh // 2), -(-ow // 2)
        total = n * th * tw * k
        fused = bias is not None
        args = (m, bias if fused else m, out, np.int64(total), *i32(k, th, tw, oh, ow, fused))
        epilogue = spec.epilogue if fused else type(spec.epilogue)()
        self.launch("winograd.cu", "winograd_f2x2_output", total, args + activation_args(epilogue))

    def fingerprint(self) -> dict:
        cupy = self.xp
        device = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(device.id)
        return {
            "device": "cuda",
            "gpu": props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
            "compute_capability": device.compute_capability,
            "sm_count": props["multiProcessorCount"],
            "driver": cupy.cuda.runtime.driverGetVersion(),
            "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
            "cublas": cupy.cuda.cublas.getVersion(device.cublas_handle),
            "cupy": cupy.__version__,
        }
