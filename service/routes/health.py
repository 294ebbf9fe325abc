"""Liveness, readiness and the model description."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from service.routes import runtime
from service.routes.models import describe
from service.runtime import Runtime

router = APIRouter(tags=["health"])
Rt = Annotated[Runtime, Depends(runtime)]


@router.get("/healthz")
async def healthz() -> dict:
    """Alive: the process answers HTTP (says nothing about the model)."""
    return {"status": "alive"}


@router.get("/readyz", responses={503: {"description": "loading, draining or failed"}})
async def readyz(rt: Rt) -> dict:
    """Ready: model loaded, warmed up and self-tested, and not draining for shutdown."""
    rt.lifecycle.check_ready()
    return {"status": "ready"}


@router.get("/model", responses={503: {"description": "model not loaded yet"}})
async def model_info(rt: Rt) -> dict:
    """The engine's description of the default model plus the service settings."""
    return describe(rt, rt.model())
