"""Padding arithmetic shared by Conv and the pooling operators (auto_pad, pads, ceil_mode)."""

from __future__ import annotations

import math

from engine.errors import UnsupportedModelError

AUTO_PADS = ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER")


def spatial_params(node, kernel: tuple[int, int]) -> tuple[tuple, tuple]:
    """(strides, dilations) of a 2-D window op, defaults filled in."""
    strides = tuple(node.attrs.get("strides") or (1, 1))
    dilations = tuple(node.attrs.get("dilations") or (1, 1))
    if len(strides) != 2 or len(dilations) != 2 or len(kernel) != 2:
        raise UnsupportedModelError([f"{node.name} ({node.op}): only 2-D windows are supported"])
    return strides, dilations


def resolve_pads(node, in_hw, kernel, strides, dilations, ceil_mode=False) -> tuple[int, ...]:
    """(top, left, bottom, right) explicit padding, from ``pads`` or ``auto_pad``."""
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    if auto_pad not in AUTO_PADS:
        raise UnsupportedModelError([f"{node.name} ({node.op}): auto_pad {auto_pad!r}"])
    if auto_pad == "NOTSET":
        pads = tuple(node.attrs.get("pads") or (0, 0, 0, 0))
        if len(pads) != 4:
            raise UnsupportedModelError([f"{node.name} ({node.op}): pads {pads} is not 2-D"])
        return pads[0], pads[1], pads[2], pads[3]
    if auto_pad == "VALID":
        return 0, 0, 0, 0
    begin, end = [], []
    for size, k, stride, dilation in zip(in_hw, kernel, strides, dilations):
        span = (k - 1) * dilation + 1
        total = max((math.ceil(size / stride) - 1) * stride + span - size, 0)
        small, large = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else large)
        end.append(large if auto_pad == "SAME_UPPER" else small)
    return begin[0], begin[1], end[0], end[1]


def output_size(size, k, stride, dilation, pad_begin, pad_end, ceil_mode=False) -> int:
    span = (k - 1) * dilation + 1
    room = size + pad_begin + pad_end - span
    out = (-(-room // stride) if ceil_mode else room // stride) + 1
    # ceil_mode: the last window must start inside the input or its left padding
    if ceil_mode and (out - 1) * stride >= size + pad_begin:
        out -= 1
    return out
