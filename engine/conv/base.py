"""The interface every convolution algorithm implements (one module per algorithm)."""

from __future__ import annotations

import dataclasses
import weakref
from typing import ClassVar

import numpy as np

from engine.conv.spec import ConvSpec


class ConvAlgorithm:
    """One way to compute a convolution on NHWC float32 tensors.

    Subclasses set ``name`` and implement ``applicable``, ``workspace_elems`` and ``__call__``.
    An instance is built once per (layer, batch bucket): it re-lays the weights for its own use
    and then runs without allocating, using the caller's workspace as scratch.
    """

    name: ClassVar[str] = "base"
    #: precision of the arithmetic; the tuner only offers what the user allowed.
    math: ClassVar[str] = "fp32"
    #: largest relative error (||y - ref|| / ||ref||) against im2col_gemm the tuner accepts.
    tolerance: ClassVar[float] = 1e-4
    #: backends (``Backend.device``) the algorithm is offered on.
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")

    @classmethod
    def applicable(cls, spec: ConvSpec) -> bool:
        raise NotImplementedError

    @classmethod
    def weight_bytes(cls, spec: ConvSpec) -> int:
        """Bytes of re-laid weights one call reads (the tuner's in-pass check asks which
        candidates read fewer: engine/autotune/inpass.py)."""
        return 4 * spec.k * (spec.c // spec.groups) * spec.r * spec.s

    @classmethod
    def workspace_elems(cls, spec: ConvSpec) -> int:
        """float32 elements of scratch space needed per call."""
        return 0

    def __init__(self, spec: ConvSpec, weight: np.ndarray, bias: np.ndarray | None, backend):
        self.spec = spec
        self.backend = backend
        self.xp = backend.xp
        bias = np.zeros(spec.k, np.float32) if bias is None else bias
        # A copy: an ONNX initializer is often a read-only view of the file's bytes, and a
        # compiled kernel's signature takes writable arrays only.
        self.bias = backend.asarray(np.array(bias, dtype=np.float32, order="C"))

    def fuse_pool(self, size: int) -> bool:
        """Write a ``size`` x ``size`` max-pool (stride ``size``, no padding, floor) of the
        activated output instead of the output itself, from now on; False (and no change)
        when this algorithm cannot."""
        return False

    def shared(self, what: str, weight: np.ndarray, make):
        """``make()``'s re-laid weights in layout ``what``, made once per layer and shared by
        every instance that uses that layout: the buckets of one algorithm (only the batch size
        differs) and the algorithms that lay weights out alike. An entry lives as long as an
        instance holds it, so the tuner's losing candidates leave nothing behind."""
        cache = self.backend.__dict__.setdefault("_prepared_weights", weakref.WeakValueDictionary())
        key = (what, id(weight), dataclasses.replace(self.spec, n=0))
        entry = cache.get(key)
        if entry is None:
            entry = cache[key] = Prepared(weight, make())
        self.__dict__.setdefault("_prepared", []).append(entry)
        return entry.array

    def __call__(self, x, out, workspace) -> None:
        """x: (N, H, W, C) contiguous; out: (N, OH, OW, K) contiguous; workspace: 1-D float32."""
        raise NotImplementedError

    def compiled_call(self, x, out, workspace):
        """(numba kernel, arguments) doing all of ``self(x, out, workspace)`` in one call on
        this thread, or None (see engine.chain)."""
        return None

    def lane_phases(self, x, out, workspace, lanes: int):
        """``self(x, out, workspace)`` as phases of per-lane compiled calls (``Op.lane_phases``),
        or None; by default the whole ``compiled_call`` on lane 0."""
        call = self.compiled_call(x, out, workspace)
        return None if call is None else [[call]]

    def run_in_lanes(self, x, out, workspace, unsplit: bool = False) -> bool:
        """``self(x, out, workspace)`` split across the lanes (engine/lanes.py) when they split
        it, as in a plan's chain; False (nothing done) where they do not. With ``unsplit``
        also a compiled conv they do not split (all on lane 0): the tuner times every compiled
        candidate of a plan with lanes through the same lane call, so that what it compares
        is what each adds to a chain, not how Python calls each (a 1x1 conv split in two
        took 9 us in MobileNet's chain against 15 on one thread, but 25 against 21 called
        alone). The lane chain is kept for the last buffers used."""
        from engine import chain

        lanes = chain.backend_lanes(self.backend)
        if lanes < 2 or self.spec.threads:
            return False
        key = (x.ctypes.data, out.ctypes.data, workspace.ctypes.data, workspace.size, unsplit)
        kept = self.__dict__.get("_lane_chain")
        if kept is None or kept[0] != key:
            phases = self.lane_phases(x, out, workspace, lanes)
            if phases is None or not unsplit and all(len(calls) == 1 for calls in phases):
                return False
            kept = self._lane_chain = (key, chain.LaneChain([], phases))
        kept[1].call()
        return True

    def finish(self, out2d) -> None:
        """Bias and activation, in place on the (rows, K) GEMM output."""
        self.backend.epilogue(out2d, self.bias, self.spec.epilogue)


class Prepared:
    """Re-laid weights, and the array they came from: holding it keeps its id (part of the
    cache key) from being reused by another array while the entry lives."""

    __slots__ = ("weight", "array", "__weakref__")

    def __init__(self, weight, array):
        self.weight, self.array = weight, array


def gemm_weights(spec: ConvSpec, weight: np.ndarray) -> np.ndarray:
    """(K, C/G, R, S) -> (G, R*S*C/G, K/G): the right-hand GEMM operand of each group,
    rows ordered (r, s, c) like the im2col columns."""
    g, kg, cg = spec.groups, spec.k_per_group, spec.c_per_group
    w = weight.reshape(g, kg, cg, spec.r, spec.s).transpose(0, 3, 4, 2, 1)
    return np.ascontiguousarray(w.reshape(g, spec.r * spec.s * cg, kg), dtype=np.float32)
