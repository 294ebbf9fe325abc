"""Depthwise convolution (groups == channels) by accumulating over kernel taps, no GEMM.

A per-group GEMM would be C products of (rows x R*S) by (R*S x multiplier): tiny, one BLAS call
each. Instead every tap is one broadcast multiply-add over a strided view of the (padded) input:
R*S passes over the output, all in NumPy/CuPy element-wise kernels.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from engine.arrays import pad_into
from engine.conv.base import ConvAlgorithm
from engine.conv.spec import ConvSpec


class DepthwiseDirect(ConvAlgorithm):
    """Output channel ``c * multiplier + j`` reads input channel ``c`` (ONNX group order)."""

    name = "depthwise_direct"
    #: output elements per image chunk: the chunk's output and product stay in cache across taps.
    chunk_elems: ClassVar[int] = 1 << 17

    @classmethod
    def applicable(cls, spec: ConvSpec) -> bool:
        return spec.groups == spec.c and spec.k % spec.c == 0

    @classmethod
    def images_per_chunk(cls, spec: ConvSpec) -> int:
        per_image = spec.out_h * spec.out_w * spec.k
        return max(1, min(spec.n, cls.chunk_elems // max(per_image, 1)))

    @classmethod
    def workspace_elems(cls, spec: ConvSpec) -> int:
        images = cls.images_per_chunk(spec)
        ph, pw = spec.padded_hw
        padded = images * ph * pw * spec.c if spec.has_padding else 0
        return padded + images * spec.out_h * spec.out_w * spec.k

    def __init__(self, spec, weight, bias, backend):
        super().__init__(spec, weight, bias, backend)
        self.taps = self.shared(
            "taps", weight, lambda: backend.asarray(depthwise_taps(spec, weight))
        )
        self.chunk = self.images_per_chunk(spec)

    def __call__(self, x, out, workspace) -> None:
        spec = self.spec
        if self.backend.native_depthwise:  # one fused kernel (taps are already (R, S, K))
            if not self.run_in_lanes(x, out, workspace):
                self.backend.depthwise(x, self.taps, self.bias, out, spec)
            return
        for n0 in range(0, spec.n, self.chunk):
            n1 = min(spec.n, n0 + self.chunk)
            self._run(x[n0:n1], out[n0:n1], workspace)
            self.finish(out[n0:n1].reshape(-1, spec.k))

    def compiled_call(self, x, out, workspace):
        phases = self.lane_phases(x, out, workspace, 1)
        return None if phases is None else phases[0][0]

    def lane_phases(self, x, out, workspace, lanes):
        """The CPU's compiled kernel, its output rows split across ``lanes``."""
        calls = getattr(self.backend, "depthwise_calls", None)
        if calls is None or not self.backend.native_depthwise:
            return None
        calls = calls(x, self.taps, self.bias, out, self.spec, lanes)
        return None if calls is None else [calls]

    def _run(self, x, out, workspace) -> None:
        xp, spec = self.xp, self.spec
        images = x.shape[0]
        if spec.has_padding:
            ph, pw = spec.padded_hw
            padded = workspace[: images * ph * pw * spec.c].reshape(images, ph, pw, spec.c)
            pad_into(padded, x, spec.pads)
            x, workspace = padded, workspace[padded.size :]
        out5 = out.reshape(images, spec.out_h, spec.out_w, spec.c, -1)
        product = workspace[: out5.size].reshape(out5.shape)
        (sh, sw), (dh, dw) = spec.strides, spec.dilations
        for i in range(spec.r):
            for j in range(spec.s):
                rows = slice(i * dh, i * dh + sh * (spec.out_h - 1) + 1, sh)
                cols = slice(j * dw, j * dw + sw * (spec.out_w - 1) + 1, sw)
                tap = x[:, rows, cols, :, None]
                if i == 0 and j == 0:
                    xp.multiply(tap, self.taps[0, 0], out=out5)
                else:
                    xp.multiply(tap, self.taps[i, j], out=product)
                    out5 += product


def depthwise_taps(spec: ConvSpec, weight: np.ndarray) -> np.ndarray:
    """(K, 1, R, S) -> (R, S, C, K/C): per tap, a channel-contiguous row of multipliers."""
    taps = np.asarray(weight, np.float32).reshape(spec.c, spec.k // spec.c, spec.r, spec.s)
    return np.ascontiguousarray(taps.transpose(2, 3, 0, 1))
