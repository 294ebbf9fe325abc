"""HTTP routes, one ``APIRouter`` per concern; each reaches the service through ``runtime``."""

from __future__ import annotations

from fastapi import Request

from service.runtime import Runtime


def runtime(request: Request) -> Runtime:
    """FastAPI dependency: the app's ``Runtime``."""
    return request.app.state.runtime
