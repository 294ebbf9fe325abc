"""Typed engine errors. Each says whether the caller may retry (``recoverable``)."""


class EngineError(Exception):
    """Base class of every error the engine raises."""

    recoverable = False


class ModelLoadError(EngineError):
    """The model file cannot be read or is not a valid ONNX model."""


class UnsupportedModelError(ModelLoadError):
    """The model uses operators or attributes the engine does not implement.

    ``problems`` lists every one of them, so a user sees the whole list at once.
    """

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("unsupported model: " + "; ".join(self.problems))


class InputShapeError(EngineError, ValueError):
    """The input array does not match the model's input (rank, channels, size or dtype)."""


class OutOfMemoryError(EngineError):
    """The device ran out of memory for this batch; a smaller batch may succeed."""

    recoverable = True


class DeviceUnavailableError(EngineError):
    """The requested device (e.g. ``cuda``) is not present or CuPy is not installed."""
