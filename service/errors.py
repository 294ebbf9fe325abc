"""Typed service errors and their one translation to HTTP.

Code that knows a fact raises the matching type; ``install_handlers`` is the only place that turns
errors into status codes and JSON bodies (``{"error": {"code", "message"}}``; under ``/v2`` the Open
Inference Protocol's ``{"error": "message"}``).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.errors import EngineError, InputShapeError

log = logging.getLogger("gemmserve")


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


class ModelNotFound(ServiceError):
    """A KServe route names a model this server does not serve."""

    status, code = 404, "model_not_found"


class QueueFullError(ServiceError):
    """The batcher's bounded queue has no room; the client should retry later."""

    status, code, retry_after_s = 429, "queue_full", 1


class NotReadyError(ServiceError):
    """The model is still loading or the server is draining for shutdown."""

    status, code, retry_after_s = 503, "not_ready", 1


class DeadlineExceeded(ServiceError):
    """The request's deadline passed before it could be answered."""

    status, code = 504, "deadline_exceeded"


class ClientDisconnected(ServiceError):
    """The client went away; nobody reads this answer (499 as in nginx logs)."""

    status, code = 499, "client_disconnected"


class InferenceFailed(ServiceError):
    """The engine failed on this input even when run alone."""

    status, code = 500, "inference_failed"


def error_response(request_path: str, status: int, code: str, message: str, **headers: str):
    """Render one error in the format of the route family it belongs to."""
    if request_path.startswith("/v2"):
        body: dict = {"error": message}
    else:
        body = {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers or None)


def to_service_error(exc: Exception) -> ServiceError:
    """Map an engine error that escaped to the service's types (shape errors are the client's)."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, InputShapeError):
        return UnprocessableInput(str(exc))
    if isinstance(exc, EngineError):
        return InferenceFailed(f"{type(exc).__name__}: {exc}")
    return InferenceFailed(f"{type(exc).__name__}")


def install_handlers(app: FastAPI) -> None:
    """Register the exception handlers: the single place errors become HTTP."""

    async def service_error(request: Request, exc: Exception) -> JSONResponse:
        err = to_service_error(exc)
        if err.status >= 500 and err.status not in (503, 504):
            log.error("request %s failed: %s", request.url.path, err.message)
        headers = {"Retry-After": str(err.retry_after_s)} if err.retry_after_s else {}
        return error_response(request.url.path, err.status, err.code, err.message, **headers)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        parts = [
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        ]
        return error_response(request.url.path, 422, "invalid_parameter", "; ".join(parts)[:500])

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        return error_response(request.url.path, exc.status_code, code, str(exc.detail), **headers)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return error_response(request.url.path, 500, "internal", "internal server error")

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(EngineError, service_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
