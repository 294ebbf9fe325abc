"""``create_app(settings)``: the FastAPI application. Nothing is loaded at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service import __version__
from service.config import Settings
from service.fastpath import FastPath
from service.handlers import install_handlers
from service.middleware import BodyLimit, RequestMetrics
from service.routes import health, kserve, metrics, models, predict
from service.runtime import Runtime, WorkerLink


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Connect to the engine process in the background; drain on exit."""
    rt: Runtime = app.state.runtime
    await rt.start()
    try:
        yield
    finally:
        await rt.stop()


def create_app(settings: Settings, link: WorkerLink) -> FastAPI:
    """Build one HTTP worker's app; ``link`` says where the engine process and the board are."""
    app = FastAPI(
        title="gemmserve",
        version=__version__,
        description="Image inference with dynamic batching; KServe v2 REST under /v2.",
        lifespan=lifespan,
    )
    rt = Runtime(settings, link)
    app.state.runtime = rt
    install_handlers(app)
    app.add_middleware(FastPath, routes=[*predict.FAST_ROUTES, *kserve.FAST_ROUTES])
    app.add_middleware(BodyLimit, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=rt.metrics)  # outermost: sees every status
    for router in (health.router, predict.router, models.router, kserve.router, metrics.router):
        app.include_router(router)
    if settings.model_control == "explicit":  # no model-management endpoint unless asked for
        app.include_router(models.control)
    return app
