"""The model repository: ``GET /models``, ``GET /models/{name}``, ``POST /v2/repository/index``.

Every model the service was started with is listed with its state (loading, ready, failed with
the reason, unloading); ``GET /model`` is ``GET /models/{default}``'s description, as before.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.encoders import jsonable_encoder

from service.errors import ModelNotFound
from service.protocol import READY, ModelStatus
from service.routes import runtime
from service.runtime import Runtime, Served

router = APIRouter(tags=["models"])
Rt = Annotated[Runtime, Depends(runtime)]
MODEL_VERSION = "1"
# The repository extension's state names (Triton's).
INDEX_STATES = {"loading": "LOADING", "ready": "READY", "failed": "UNAVAILABLE",
                "unloading": "UNLOADING"}  # fmt: skip


def describe(rt: Runtime, served: Served) -> dict:
    """A ready model: the engine's ``model.info()``, its preprocessing and the service settings."""
    spec, desc = served.description.spec, served.description
    info = dict(desc.info)
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
        bucket_seconds=desc.bucket_seconds,
        processes=rt.processes(),
    )
    return jsonable_encoder(info)


def summary(rt: Runtime, status: ModelStatus) -> dict:
    """One model's line in ``GET /models``."""
    entry: dict = {"name": status.name, "state": status.state,
                   "default": status.name == rt.default_name}  # fmt: skip
    if status.reason:
        entry["reason"] = status.reason
    desc = status.description
    if desc is not None:
        entry["inputs"] = [{"name": desc.input_name, "shape": ["N", *desc.input_shape]}]
        entry["outputs"] = [{"name": desc.output_name, "shape": ["N", *desc.output_shape]}]
    return entry


def status_of(rt: Runtime, name: str) -> ModelStatus:
    """The model's state (404 for a name the engine does not serve; 503 before it said)."""
    status = rt.catalog.models.get(name)
    if status is None:
        if not rt.catalog.models:
            rt.lifecycle.check_ready()
        raise ModelNotFound(f"model {name!r} is not served here")
    return status


@router.get("/models", responses={503: {"description": "the engine has not reported yet"}})
async def list_models(rt: Rt) -> dict:
    """Every model with its state; ``default`` answers ``/predict`` and ``/model``."""
    if not rt.catalog.models:
        rt.lifecycle.check_ready()
    models = [summary(rt, status) for status in rt.catalog.models.values()]
    return {"default": rt.default_name, "models": models}


@router.get("/models/{name}", responses={404: {"description": "no such model"}})
async def model_detail(name: str, rt: Rt) -> dict:
    """A model's description and state (state and reason only while it is not ready)."""
    status = status_of(rt, name)
    if status.state == READY and name in rt.served:
        return {**describe(rt, rt.served[name]), "state": READY}
    return summary(rt, status)


@router.post("/v2/repository/index", tags=["kserve-v2"])
async def repository_index(rt: Rt) -> list[dict]:
    """The repository extension's index: every model, its version and state."""
    if not rt.catalog.models:
        rt.lifecycle.check_ready()
    index = []
    for status in rt.catalog.models.values():
        entry = {"name": status.name, "version": MODEL_VERSION,
                 "state": INDEX_STATES.get(status.state, "UNAVAILABLE")}  # fmt: skip
        if status.reason:
            entry["reason"] = status.reason
        index.append(entry)
    return index
