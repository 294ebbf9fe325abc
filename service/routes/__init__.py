"""HTTP routes, one ``APIRouter`` per concern; each reaches the service through ``runtime``."""

from __future__ import annotations

from fastapi import Request

from service.runtime import Runtime


async def runtime(request: Request) -> Runtime:
    """FastAPI dependency: the app's ``Runtime`` (async: a sync dependency costs a thread hop)."""
    return request.app.state.runtime
