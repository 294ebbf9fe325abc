"""Array helpers every layer uses (ops, conv algorithms, backends), on NumPy and CuPy alike."""

from __future__ import annotations


def pad_into(padded, x, pads, value=0.0) -> None:
    """Write NHWC ``x`` into the middle of ``padded`` and fill only the border with ``value``."""
    top, left, bottom, right = pads
    h, w = x.shape[1], x.shape[2]
    padded[:, top : top + h, left : left + w, :] = x
    padded[:, :top] = value
    padded[:, top + h :] = value
    padded[:, top : top + h, :left] = value
    padded[:, top : top + h, left + w :] = value
