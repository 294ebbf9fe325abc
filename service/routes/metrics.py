"""Prometheus scrape endpoint."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from service.routes import runtime
from service.runtime import Runtime

router = APIRouter(tags=["monitoring"])


@router.get("/metrics", response_class=Response)
async def metrics(rt: Annotated[Runtime, Depends(runtime)]) -> Response:
    """Prometheus text exposition of the whole service's metrics (every process)."""
    return Response(rt.metrics.render(rt.live_metrics), media_type=rt.metrics.content_type)
