"""gemmserve's inference engine: ONNX CNNs as im2col + GEMM on NumPy (CPU) or CuPy (GPU)."""

from engine.crosscheck import CrossCheckError
from engine.errors import (
    DeviceUnavailableError,
    EngineError,
    InputShapeError,
    ModelLoadError,
    OutOfMemoryError,
    UnsupportedModelError,
)
from engine.model import EngineStats, Model, load_model
from engine.version import __version__

__all__ = [
    "load_model", "Model", "EngineStats", "EngineError", "ModelLoadError", "UnsupportedModelError",
    "InputShapeError", "OutOfMemoryError", "DeviceUnavailableError", "CrossCheckError",
    "__version__",
]  # fmt: skip
