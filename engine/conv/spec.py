"""The full description of one convolution: what the autotune cache keys on."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from engine.activations import ACTIVATIONS
from engine.threads import cpu_cores


@dataclass(frozen=True)
class Epilogue:
    """Activation applied in place on the conv output after the bias.

    ``alpha``/``beta`` carry the parameters: LeakyRelu slope, Clip min/max, HardSigmoid alpha/beta.
    """

    kind: str = "none"
    alpha: float = 0.0
    beta: float = 0.0

    def __post_init__(self):
        if self.kind not in ACTIVATIONS:
            raise ValueError(f"unknown epilogue {self.kind!r}")

    def key(self) -> str:
        if self.kind in ("leaky_relu", "clip", "hard_sigmoid"):
            return f"{self.kind}({self.alpha:g},{self.beta:g})"
        return self.kind


@dataclass(frozen=True)
class ConvSpec:
    """A 2-D convolution on an NHWC float32 tensor, with the batch size of one bucket.

    pads are (top, left, bottom, right); weights are (K, C/groups, R, S) as in ONNX.
    """

    n: int
    c: int
    h: int
    w: int
    k: int
    r: int
    s: int
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    strides: tuple[int, int] = (1, 1)
    dilations: tuple[int, int] = (1, 1)
    groups: int = 1
    dtype: str = "float32"
    layout: str = "NHWC"
    epilogue: Epilogue = Epilogue()
    math: str = "fp32"
    #: CPU threads the conv may use: 0 for every core (``cpu_cores()``), 1 inside a plan that
    #: runs one slice of the batch per core (``engine.plan.SplitPlan``)
    threads: int = 0

    @property
    def cores(self) -> int:
        """Threads this conv splits its work across."""
        return self.threads or cpu_cores()

    @property
    def out_h(self) -> int:
        span = self.dilations[0] * (self.r - 1) + 1
        return (self.h + self.pads[0] + self.pads[2] - span) // self.strides[0] + 1

    @property
    def out_w(self) -> int:
        span = self.dilations[1] * (self.s - 1) + 1
        return (self.w + self.pads[1] + self.pads[3] - span) // self.strides[1] + 1

    @property
    def padded_hw(self) -> tuple[int, int]:
        return self.h + self.pads[0] + self.pads[2], self.w + self.pads[1] + self.pads[3]

    @property
    def c_per_group(self) -> int:
        return self.c // self.groups

    @property
    def k_per_group(self) -> int:
        return self.k // self.groups

    @property
    def has_padding(self) -> bool:
        return any(self.pads)

    @property
    def is_depthwise(self) -> bool:
        return self.groups == self.c and self.groups > 1

    def flops(self) -> int:
        """Multiply-adds times two of the direct convolution."""
        macs = self.n * self.out_h * self.out_w * self.k * self.c_per_group * self.r * self.s
        return 2 * macs

    def with_batch(self, n: int) -> ConvSpec:
        return dataclasses.replace(self, n=n)

    def key(self) -> str:
        """Stable text key of every field (the autotune cache's entry key)."""
        return (
            f"n{self.n}_c{self.c}_h{self.h}_w{self.w}_k{self.k}_r{self.r}_s{self.s}"
            f"_p{'.'.join(map(str, self.pads))}_st{'.'.join(map(str, self.strides))}"
            f"_d{'.'.join(map(str, self.dilations))}_g{self.groups}_{self.dtype}_{self.layout}"
            f"_{self.epilogue.key()}_{self.math}" + (f"_t{self.threads}" if self.threads else "")
        )
