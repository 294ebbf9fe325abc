"""Typed service errors. Code that knows a fact raises the matching type; each type carries its
HTTP status and code, which ``service.handlers`` (the one place) turns into responses."""

from __future__ import annotations

from engine.errors import EngineError, InputShapeError


class ServiceError(Exception):
    """Base class: ``status`` is the HTTP status, ``code`` a stable machine-readable name."""

    status = 500
    code = "internal"
    retry_after_s: int | None = None

    def __init__(self, message: str, retry_after_s: int | None = None):
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s or type(self).retry_after_s


class MalformedRequest(ServiceError):
    """The request cannot be parsed (bad base64, broken multipart, bad Content-Length)."""

    status, code = 400, "malformed"


class InvalidImage(ServiceError):
    """The bytes are not a decodable image (empty, truncated, random)."""

    status, code = 400, "invalid_image"


class PayloadTooLarge(ServiceError):
    """Body, part, base64 string or image pixel count above its limit."""

    status, code = 413, "too_large"


class UnsupportedMediaType(ServiceError):
    """Content type or image format outside the allow-list."""

    status, code = 415, "unsupported_media_type"


class UnprocessableInput(ServiceError):
    """Well-formed but unusable: wrong shape or dtype, NaN/Inf, missing file part."""

    status, code = 422, "unprocessable"


class InvalidParameter(ServiceError):
    """A query parameter or header outside its allowed values."""

    status, code = 422, "invalid_parameter"


class ModelNotFound(ServiceError):
    """A KServe route names a model this server does not serve."""

    status, code = 404, "model_not_found"


class ControlForbidden(ServiceError):
    """Model load or unload from a host other than loopback (without --control-allow-remote)."""

    status, code = 403, "forbidden"


class ModelUnavailable(ServiceError):
    """The model is known but does not answer: it failed to load (the message says why)."""

    status, code = 503, "model_unavailable"


class ModelTooLarge(ServiceError):
    """The model would not fit: its estimated bytes exceed the device's free memory (less a
    margin) or what ``--memory-limit-mib`` leaves. 507, as WebDAV's "Insufficient Storage": the
    request is valid but the server lacks the room, and retrying helps only after an unload."""

    status, code = 507, "insufficient_memory"


class QueueFullError(ServiceError):
    """The batcher's bounded queue has no room; the client should retry later."""

    status, code, retry_after_s = 429, "queue_full", 1


class WouldMissTarget(QueueFullError):
    """With ``--target-p99-ms``: the queue ahead would make this request answer too late."""

    code = "would_miss_target"


class NotReadyError(ServiceError):
    """The model is still loading or the server is draining for shutdown."""

    status, code, retry_after_s = 503, "not_ready", 1


class EngineUnavailable(ServiceError):
    """The engine process is gone (crashed or restarting); the request did not complete."""

    status, code, retry_after_s = 503, "engine_unavailable", 1


class DeadlineExceeded(ServiceError):
    """The request's deadline passed before it could be answered."""

    status, code = 504, "deadline_exceeded"


class ClientDisconnected(ServiceError):
    """The client went away; nobody reads this answer (499 as in nginx logs)."""

    status, code = 499, "client_disconnected"


class Overloaded(ServiceError):
    """The device ran out of memory even for a single image."""

    status, code, retry_after_s = 503, "overloaded", 1


class InferenceFailed(ServiceError):
    """The engine failed on this input even when run alone."""

    status, code = 500, "inference_failed"


def to_service_error(exc: Exception) -> ServiceError:
    """Map an engine error that escaped to the service's types (shape errors are the client's)."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, InputShapeError):
        return UnprocessableInput(str(exc))
    if isinstance(exc, EngineError) and exc.recoverable:
        return Overloaded(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, EngineError):
        return InferenceFailed(f"{type(exc).__name__}: {exc}")
    return InferenceFailed(f"{type(exc).__name__}")
