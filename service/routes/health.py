"""Liveness, readiness and the model description."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.encoders import jsonable_encoder

from service.routes import runtime
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
    """The engine's description of the model plus the service settings."""
    if rt.description is None:
        rt.lifecycle.check_ready()
    spec = rt.description.spec
    info = dict(rt.description.info)
    info.update(
        name=spec.name,
        labels=list(spec.labels) if spec.labels else None,
        preprocess={
            "color_mode": spec.color_mode,
            "size": list(spec.size_hw),
            "resize": spec.resize,
            "resample": spec.resample,
            "invert": spec.invert,
            "mean": list(spec.mean),
            "std": list(spec.std),
        },
        output_kind=spec.output,
        service=rt.settings.public(),
        bucket_seconds=rt.description.bucket_seconds,
        processes=rt.processes(),
    )
    return jsonable_encoder(info)
