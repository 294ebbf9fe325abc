"""The inference routes, dispatched ahead of FastAPI's router.

FastAPI still declares ``POST /predict`` and the v2 ``infer`` routes (the OpenAPI schema, and the
same endpoint functions behind them), but a request for one of them is matched here by a regular
expression and handed to its endpoint directly: FastAPI's route matching over every route and
its dependency solving cost more CPU per request than reading, decoding and queueing a small
image (``python -m loadtests.loop_cost``). Errors become responses by ``service.handlers``'s table,
as they would under FastAPI.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.handlers import handle_exception


@dataclass(frozen=True)
class FastRoute:
    """``path`` is the route template (the metrics label); ``pattern`` matches request paths
    and names the path parameters."""

    path: str
    pattern: re.Pattern
    endpoint: Callable[[Request], Awaitable[Response]]


class FastPath:
    """Pure ASGI middleware: POST requests whose path matches a ``FastRoute`` skip the router."""

    def __init__(self, app: ASGIApp, routes: list[FastRoute]):
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            for route in self.routes:
                found = route.pattern.fullmatch(scope["path"])
                if found:
                    await self._serve(route, found, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    @staticmethod
    async def _serve(route: FastRoute, found: re.Match, scope: Scope, receive, send) -> None:
        scope["route"] = route  # the request metrics label it with the template
        scope["path_params"] = {k: v for k, v in found.groupdict().items() if v is not None}
        request = Request(scope, receive, send)
        try:
            response = await route.endpoint(request)
        except Exception as exc:  # noqa: BLE001 - mapped to HTTP like FastAPI's handlers do
            response = await handle_exception(request, exc)
        await response(scope, receive, send)
