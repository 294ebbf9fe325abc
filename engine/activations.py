"""Element-wise activations applied in place: shared by the conv epilogue and standalone ops."""

from __future__ import annotations

# Every activation a conv epilogue can apply; the index is its code in the CUDA kernels
# (engine/kernels/), so append only.
ACTIVATIONS = (
    "none",
    "relu",
    "leaky_relu",
    "clip",
    "sigmoid",
    "hard_sigmoid",
    "hard_swish",
    "tanh",
)


def apply_activation(xp, y, kind: str, alpha: float = 0.0, beta: float = 0.0) -> None:
    """Overwrite ``y`` with ``activation(y)``.

    relu, clip, sigmoid, hard_sigmoid and tanh allocate nothing; leaky_relu and hard_swish need one
    temporary of y's size.
    """
    if kind == "none":
        return
    if kind == "relu":
        xp.maximum(y, 0, out=y)
    elif kind == "clip":
        xp.clip(y, alpha, beta, out=y)
    elif kind == "sigmoid":
        xp.negative(y, out=y)
        xp.exp(y, out=y)
        y += 1
        xp.reciprocal(y, out=y)
    elif kind == "tanh":
        xp.tanh(y, out=y)
    elif kind == "hard_sigmoid":
        y *= alpha
        y += beta
        xp.clip(y, 0, 1, out=y)
    elif kind == "leaky_relu":
        xp.copyto(y, y * y.dtype.type(alpha), where=y < 0)
    elif kind == "hard_swish":
        gate = y * y.dtype.type(1 / 6)
        gate += y.dtype.type(0.5)
        xp.clip(gate, 0, 1, out=gate)
        y *= gate
    else:
        raise ValueError(f"unknown activation {kind!r}")
