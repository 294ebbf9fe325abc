"""The one place errors become HTTP: status, JSON body and ``Retry-After``.

Bodies are ``{"error": {"code", "message"}}``; under ``/v2`` the Open Inference Protocol's
``{"error": "message"}``, which Triton's and KServe's clients read.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from engine.errors import EngineError
from service.errors import ClientDisconnected, ServiceError, to_service_error

log = logging.getLogger("gemmserve")


def error_response(request_path: str, status: int, code: str, message: str, **headers: str):
    """Render one error in the format of the route family it belongs to."""
    if request_path.startswith("/v2"):
        body: dict = {"error": message}
    else:
        body = {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers or None)


async def service_error(request: Request, exc: Exception) -> JSONResponse:
    err = to_service_error(exc)
    if err.status >= 500 and err.status not in (503, 504):
        log.error("request %s failed: %s", request.url.path, err.message)
    headers = {"Retry-After": str(err.retry_after_s)} if err.retry_after_s else {}
    if err.status == 413:
        # The rest of the body is unread: close rather than read it as the next request.
        headers["Connection"] = "close"
    return error_response(request.url.path, err.status, err.code, err.message, **headers)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()]
    return error_response(request.url.path, 422, "invalid_parameter", "; ".join(parts)[:500])


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    headers = dict(exc.headers or {})
    return error_response(request.url.path, exc.status_code, code, str(exc.detail), **headers)


async def unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected error on %s", request.url.path, exc_info=exc)
    return error_response(request.url.path, 500, "internal", "internal server error")


async def client_gone(request: Request, exc: Exception) -> JSONResponse:
    # Nobody reads this answer; it only labels the request in the metrics.
    err = ClientDisconnected("client disconnected while sending the body")
    return error_response(request.url.path, err.status, err.code, err.message)


# Most specific first: the handler for the first type an exception is an instance of.
HANDLERS = (
    (ClientDisconnect, client_gone),
    (ServiceError, service_error),
    (EngineError, service_error),
    (RequestValidationError, validation_error),
    (StarletteHTTPException, http_error),
    (Exception, unexpected),
)


async def handle_exception(request: Request, exc: Exception) -> JSONResponse:
    """The response for any exception, by the same table FastAPI uses (for routes served
    outside FastAPI's router: ``service.fastpath``)."""
    handler = next(h for kind, h in HANDLERS if isinstance(exc, kind))
    return await handler(request, exc)


def install_handlers(app: FastAPI) -> None:
    """Register the exception handlers: the single place errors become HTTP."""
    for kind, handler in HANDLERS:
        app.add_exception_handler(kind, handler)
