"""What every array backend offers the engine: an array module and a few device primitives."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import numpy as np

from engine.activations import apply_activation
from engine.arrays import pad_into


class Backend:
    """An array module (``xp``) plus device primitives, resolved once per model.

    The engine's code is written against ``backend.xp`` so that NumPy and CuPy share one path;
    the few places where a device wants its own kernel (the im2col gather) are methods here.
    """

    name = "base"
    device = "none"
    xp: Any = np
    #: the device runs these steps as its own kernels (CuPy); elsewhere the ops' array code runs
    native_pool = False
    native_depthwise = False
    native_winograd_f2x2 = False

    def empty(self, shape, dtype=np.float32):
        return self.xp.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype=np.float32):
        return self.xp.zeros(shape, dtype=dtype)

    def asarray(self, host: np.ndarray):
        """Copy a host array to the device (a no-op view on the CPU)."""
        return self.xp.asarray(host)

    def to_host(self, array) -> np.ndarray:
        return np.asarray(array)

    def copy_to(self, dst, src_host: np.ndarray) -> None:
        """Copy a host array into an existing device buffer."""
        dst[...] = src_host

    def synchronize(self) -> None:
        """Wait until queued device work finished (nothing to wait for on the CPU)."""

    def now(self) -> float:
        """A timestamp for timing device work: synchronises first."""
        self.synchronize()
        return time.perf_counter()

    def is_out_of_memory(self, error: BaseException) -> bool:
        return isinstance(error, MemoryError)

    def im2col(self, x, cols, spec, padded) -> None:
        """Copy every kernel window of the NHWC input ``x`` into ``cols``.

        ``cols`` is (N, OH, OW, G, R, S, C/G): per GEMM row, one contiguous run per group.
        ``padded`` is a scratch buffer of the padded input's shape, or None without padding.
        One strided copy: the kernel window becomes extra axes of a view of the padded input.
        """
        if spec.has_padding:
            pad_into(padded, x, spec.pads)
            x = padded
        sn, sh, sw, sc = x.strides
        cg = spec.c_per_group
        shape = (spec.n, spec.out_h, spec.out_w, spec.groups, spec.r, spec.s, cg)
        strides = (
            sn,
            sh * spec.strides[0],
            sw * spec.strides[1],
            sc * cg,
            sh * spec.dilations[0],
            sw * spec.dilations[1],
            sc,
        )
        cols[...] = self.xp.lib.stride_tricks.as_strided(x, shape=shape, strides=strides)

    def compute_scope(self):
        """The context every forward pass and every timed tuning run of this backend runs in
        (the CPU backend holds BLAS to one thread in it when the engine does the threading)."""
        return contextlib.nullcontext()

    def execute(self, plan) -> list:
        """Run a plan's steps (a GPU backend may replay them as a captured CUDA graph); a pass
        of compiled chains only needs no BLAS setting (a few microseconds a call)."""
        if plan.compiled_only():
            return plan.execute()
        with self.compute_scope():
            return plan.execute()

    def epilogue(self, y2d, bias, epilogue) -> None:
        """Add ``bias`` (K,) or None to the (rows, K) ``y2d`` and apply ``epilogue``'s
        activation, in place (one fused kernel on a GPU)."""
        if bias is not None:
            y2d += bias
        apply_activation(self.xp, y2d, epilogue.kind, epilogue.alpha, epilogue.beta)

    def fingerprint(self) -> dict:
        """Everything that changes which algorithm is fastest on this device."""
        raise NotImplementedError
