"""What one running service holds: settings, lifecycle, metrics, the batcher and the loaded model.

The model is loaded, warmed and self-tested on the engine thread (the only thread that touches it);
until that finishes ``/readyz`` answers 503.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from starlette.requests import Request

import engine
from service.batcher import Batcher
from service.config import Settings
from service.decode import Decoder, Limits
from service.errors import QueueFullError
from service.lifecycle import Lifecycle
from service.metrics import Metrics
from service.modelspec import ModelSpec, load_spec, locate
from service.multipart import MultipartLimits
from service.results import Ranked, rank_batch

log = logging.getLogger("gemmserve")

ModelFactory = Callable[[Settings], Any]


def load_engine_model(settings: Settings) -> Any:
    """The default model factory: the engine, on the configured device and batch buckets."""
    onnx_path, _, _ = locate(settings.model)
    return engine.load_model(
        str(onnx_path),
        device=settings.device,
        batch_sizes=settings.effective_batch_sizes,
        autotune_cache=str(settings.autotune_cache) if settings.autotune_cache else None,
        autotune_mode=settings.autotune_mode,
        allow_tf32=settings.allow_tf32,
        cuda_graphs=settings.cuda_graphs,
        cpu_threading=settings.cpu_threading,
    )


def self_test(model: Any) -> None:
    """Run a random batch of 2 and each image alone: outputs finite, shaped, and consistent."""
    rng = np.random.default_rng()
    x = rng.standard_normal((2, *model.input_shape)).astype(np.float32)
    pair = np.array(model(x), copy=True)
    single = np.array(model(x[1:]), copy=True)
    expected = (2, *tuple(model.output_shape))
    if pair.shape != expected or not np.isfinite(pair).all():
        raise RuntimeError(f"self-test: output shape {pair.shape} (want {expected}) or not finite")
    if not np.allclose(pair[1], single[0], rtol=1e-3, atol=1e-4):
        raise RuntimeError("self-test: batch of 2 and batch of 1 disagree")


def bucket_seconds(*warmups: list[dict]) -> dict[int, float]:
    """Seconds per batch bucket: the best of the engine's warm-up runs (the first may include
    tuning). Empty when the engine reports no per-bucket times."""
    best: dict[int, float] = {}
    for stats in warmups:
        for entry in stats or ():
            if isinstance(entry, dict) and "bucket" in entry and "seconds" in entry:
                bucket, seconds = int(entry["bucket"]), float(entry["seconds"])
                best[bucket] = min(seconds, best.get(bucket, seconds))
    return best


def limits_of(settings: Settings) -> Limits:
    return Limits(
        max_image_pixels=settings.max_image_pixels,
        allowed_formats=settings.allowed_formats,
        # A request larger than the queue could never be admitted: refuse it as too large instead.
        max_images=min(settings.max_images_per_request, settings.max_queue),
        max_item_bytes=settings.max_body_bytes,
        multipart=MultipartLimits(
            max_files=settings.multipart_max_files,
            max_fields=settings.multipart_max_fields,
            max_headers=settings.multipart_max_headers,
        ),
    )


async def _wait_disconnect(request: Request) -> None:
    # After the body is read, the server's receive() only returns once the client goes away.
    while (await request.receive())["type"] != "http.disconnect":
        pass


class Runtime:
    """The service's state, shared by the routes through ``app.state.runtime``."""

    def __init__(self, settings: Settings, model_factory: ModelFactory | None = None):
        self.settings = settings
        self.lifecycle = Lifecycle(settings.retry_after_s)
        self.metrics = Metrics()
        self.model_factory = model_factory or load_engine_model
        self.model: Any = None
        self.spec: ModelSpec | None = None
        self.decoder: Decoder | None = None
        self.batcher: Batcher | None = None
        self.executor: ThreadPoolExecutor | None = None
        self.bucket_seconds: dict[int, float] = {}
        self.model_info: dict = {}
        self._startup: asyncio.Task | None = None

    # ---- start and stop --------------------------------------------------------------------

    def _setup(self) -> Callable[[np.ndarray], list[Ranked]]:
        """Runs on the engine thread: load, warm every bucket, self-test, cross-check."""
        started = time.monotonic()
        model = self.model_factory(self.settings)
        spec = load_spec(self.settings.model, tuple(model.input_shape))
        # Twice: the first run tunes and plans, the second times each bucket for the batcher.
        self.bucket_seconds = bucket_seconds(model.warmup(), model.warmup())
        self_test(model)
        if self.settings.cross_check == "always" or model.device == "cuda":
            model.cross_check()  # CrossCheckError: the service refuses to start, saying where
        if set(self.bucket_seconds) >= set(model.batch_sizes):
            self.batcher.set_cost_model(lambda n: self.bucket_seconds[model.bucket_for(n)])
        # Read once here: the engine may only be touched from this thread.
        self.model_info = dict(model.info())
        self.metrics.set_autotune(dict(self.model_info.get("autotune") or {}))
        self.model, self.spec = model, spec
        self.decoder = Decoder(spec, tuple(model.input_shape), limits_of(self.settings))
        elapsed_s = time.monotonic() - started
        log.info("model %s ready on %s in %.1f s", spec.name, model.device, elapsed_s)
        return lambda x: rank_batch(model(x), spec)

    def start(self) -> None:
        """Start the engine thread and the decode pool; readiness follows in the background."""
        s = self.settings
        self.executor = ThreadPoolExecutor(s.decode_threads, thread_name_prefix="gemmserve-decode")
        self.batcher = Batcher(
            self._setup,
            max_batch_size=s.max_batch_size,
            max_queue=s.max_queue,
            max_delay_ms=s.max_delay_ms,
            retry_after_s=s.retry_after_s,
            observer=self.metrics,
        )
        self.metrics.bind(
            queue_depth=lambda: self.batcher.depth,
            running=lambda: self.batcher.running,
            ready=lambda: float(self.lifecycle.ready),
            inflight=lambda: self.lifecycle.inflight,
        )
        self._startup = asyncio.create_task(self._become_ready(self.batcher.start()))

    async def _become_ready(self, ready: asyncio.Future) -> None:
        try:
            await ready
        except Exception as exc:  # noqa: BLE001 - a load failure stops the server, with its reason
            # One line for the operator (an unsupported model lists every problem in it); the
            # traceback only at debug level.
            log.error("model failed to load: %s: %s", type(exc).__name__, exc)
            log.debug("model load traceback", exc_info=exc)
            self.lifecycle.set_failed(f"model failed to load: {exc}")
            return
        if self.model.device == "cuda":
            self.metrics.bind_gpu_memory(*_gpu_memory_probes(self.model.backend))
        self.lifecycle.set_ready()

    async def stop(self) -> None:
        """Drain: refuse new work, let admitted work finish (bounded), stop the engine thread."""
        self.lifecycle.start_draining()
        await self.lifecycle.wait_idle(self.settings.graceful_shutdown_s)
        if self.batcher is not None:
            await asyncio.to_thread(self.batcher.close, self.settings.graceful_shutdown_s)
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)

    # ---- per request ---------------------------------------------------------------------------

    def check_capacity(self) -> None:
        """Refuse at once, before reading the body, when the queue is already full."""
        if self.batcher.depth >= self.batcher.max_queue:
            self.metrics.on_reject("queue_full", 1)
            raise QueueFullError(
                f"queue full ({self.batcher.depth} images waiting)", self.settings.retry_after_s
            )

    async def blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run decoding work in the decode pool, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def deadline(self, timeout_ms: float | None) -> float:
        """A monotonic deadline: the configured timeout, shortened (never lengthened) by clients."""
        budget_ms = self.settings.timeout_ms
        if timeout_ms is not None and 0 < timeout_ms < budget_ms:
            budget_ms = timeout_ms
        return time.monotonic() + budget_ms / 1000.0

    async def infer(
        self, request: Request, batch: np.ndarray, timeout_ms: float | None
    ) -> list[Ranked]:
        """Queue ``batch``; one ranked output per image. If the client disconnects first, its
        images are dropped unrun."""
        gone = asyncio.ensure_future(_wait_disconnect(request))
        try:
            return await self.batcher.infer(batch, self.deadline(timeout_ms), give_up=gone)
        finally:
            gone.cancel()


def _gpu_memory_probes(backend) -> tuple[Callable[[], float], Callable[[], float]]:
    """Device bytes in use and in total, read from the engine's plain memory stats."""

    def used() -> float:
        memory = backend.memory()
        return float(memory["device_total_bytes"] - memory["device_free_bytes"])

    total = float(backend.memory()["device_total_bytes"])
    return used, (lambda: total)
