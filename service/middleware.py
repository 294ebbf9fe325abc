"""Pure ASGI middleware: the body-size limit (enforced while streaming) and request metrics."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import MalformedRequest, PayloadTooLarge
from service.handlers import error_response
from service.metrics import Metrics

MODEL_KEY = "gemmserve.model"  # the scope key naming the served model a request was for


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return None


class BodyLimit:
    """Refuse a declared Content-Length above the limit before reading (413), a malformed one (400),
    and stop reading a streamed body as soon as it passes the limit (413)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        path = scope.get("path", "")
        if declared is not None and not declared.strip().isdigit():
            err = MalformedRequest(f"invalid Content-Length {declared[:40]!r}")
            await self._refuse(path, err, scope, receive, send)
            return
        if declared is not None and int(declared) > self.max_body_bytes:
            err = PayloadTooLarge(f"body of {int(declared)} bytes exceeds {self.max_body_bytes}")
            await self._refuse(path, err, scope, receive, send)
            return
        await self.app(scope, self._limited(receive), send)

    def _limited(self, receive: Receive) -> Receive:
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise PayloadTooLarge(f"body exceeds {self.max_body_bytes} bytes")
            return message

        return limited_receive

    @staticmethod
    async def _refuse(path: str, err, scope: Scope, receive: Receive, send: Send) -> None:
        # The body stays unread: ask the client to close so it is not taken as the next request.
        response = error_response(path, err.status, err.code, err.message, Connection="close")
        await response(scope, receive, send)


class RequestMetrics:
    """Time every HTTP request; label it with its route template (never the raw path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            model = scope.get(MODEL_KEY, "")  # set by a route once it knows the model exists
            self.metrics.observe_request(template, status, time.perf_counter() - started, model)
