"""Prometheus metrics: the only module that imports ``prometheus_client``.

Fed from plain stats (``BatchStats`` from the batcher, one call per HTTP request). Each app gets
its own registry, so several apps in one process (tests) never collide. Label values are bounded:
routes are templates (or ``unmatched``), statuses are the few codes the service sends.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from service.batcher import BatchStats

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Holds the service's collectors; implements the batcher's ``Observer``."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.request_duration = self._seconds(
            "gemmserve_request_duration_seconds",
            "HTTP request latency by route template and status",
            ["route", "status"],
        )
        self.queue_wait = self._seconds(
            "gemmserve_queue_wait_seconds",
            "Time an image waited in the queue before its batch started",
        )
        self.batch_size = Histogram(
            "gemmserve_batch_size", "Images per engine batch", buckets=BATCH_BUCKETS, registry=reg
        )
        self.inference_duration = self._seconds(
            "gemmserve_inference_duration_seconds", "Engine time per batch"
        )
        self.rejected = Counter(
            "gemmserve_requests_rejected",
            "Images refused or dropped before inference, by reason",
            ["reason"],
            registry=reg,
        )
        self.queue_depth = Gauge(
            "gemmserve_queue_depth", "Images waiting for the engine", registry=reg
        )
        self.images = Counter("gemmserve_images", "Images run by the engine", registry=reg)
        self.batch_splits = Counter(
            "gemmserve_batch_splits",
            "Failed batches split in halves and retried, by reason (oom, error)",
            ["reason"],
            registry=reg,
        )
        self.running = Gauge(
            "gemmserve_batch_running_images", "Images in the batch being run now", registry=reg
        )
        self.ready = Gauge("gemmserve_ready", "1 when the service admits requests", registry=reg)
        self.inflight = Gauge(
            "gemmserve_requests_in_flight", "Inference requests being served", registry=reg
        )

    def _seconds(self, name: str, text: str, labels: tuple | list = ()) -> Histogram:
        return Histogram(name, text, labels, buckets=LATENCY_BUCKETS_S, registry=self.registry)

    def bind(
        self,
        queue_depth: Callable[[], float],
        running: Callable[[], float],
        ready: Callable[[], float],
        inflight: Callable[[], float],
    ) -> None:
        """Read these at scrape time instead of tracking every change."""
        self.queue_depth.set_function(queue_depth)
        self.running.set_function(running)
        self.ready.set_function(ready)
        self.inflight.set_function(inflight)

    def set_autotune(self, info: dict) -> None:
        """The autotuner's counters after warm-up (tuning happens at load, so they stay put)."""
        choices = Gauge(
            "gemmserve_autotune_choices",
            "Conv algorithm choices at load, by where they came from",
            ["source"],
            registry=self.registry,
        )
        for source in ("hits", "misses", "defaults", "fallbacks"):
            choices.labels(source=source).set(float(info.get(source, 0)))
        tuning = Gauge(
            "gemmserve_autotune_tuning_seconds",
            "Time spent timing candidates at load",
            registry=self.registry,
        )
        tuning.set(float(info.get("tuning_seconds", 0.0)))

    def bind_gpu_memory(
        self, used_bytes: Callable[[], float], total_bytes: Callable[[], float]
    ) -> None:
        """On a GPU only: device memory in use (by anything on the device), and its total."""
        used = Gauge(
            "gemmserve_gpu_memory_used_bytes",
            "GPU memory in use on the device (total minus free: all processes and contexts)",
            registry=self.registry,
        )
        total = Gauge(
            "gemmserve_gpu_memory_total_bytes", "GPU memory of the device", registry=self.registry
        )
        used.set_function(used_bytes)
        total.set_function(total_bytes)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.request_duration.labels(route=route, status=str(status)).observe(seconds)

    def on_batch(self, stats: BatchStats) -> None:
        self.batch_size.observe(stats.size)
        self.inference_duration.observe(stats.inference_s)
        self.images.inc(stats.size)
        for wait_s in stats.queue_wait_s:
            self.queue_wait.observe(wait_s)

    def on_reject(self, reason: str, count: int) -> None:
        self.rejected.labels(reason=reason).inc(count)

    def on_split(self, reason: str) -> None:
        self.batch_splits.labels(reason=reason).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
