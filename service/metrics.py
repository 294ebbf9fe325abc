"""Prometheus metrics: the only module that imports ``prometheus_client``.

Every process of the service records into prometheus-client's multiprocess directory
(``PROMETHEUS_MULTIPROC_DIR``, a private temporary directory the supervisor sets before any child
starts and removes at exit); whichever worker answers ``GET /metrics`` merges all of them, so one
scrape shows the whole service: the workers' request histograms summed, the engine's batch
histograms, and ``gemmserve_up`` per process kind. Values that change every moment (queue depth,
images running, readiness) are read at scrape time instead of written on every change.

Fed from plain stats (``BatchStats`` from the batcher, one call per HTTP request). Label values are
bounded: routes are templates (or ``unmatched``), statuses are the few codes the service sends,
models are the names of models the service was started with ("" where no model is involved).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily

from service.batcher import BatchStats

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Every label value is written at start (as 0): a family is in each scrape before its first event.
REJECT_REASONS = ("queue_full", "slo", "deadline", "cancelled", "shutdown")
SPLIT_REASONS = ("oom", "error")
# Read at scrape time: (name, help) -> the reader's key.
LIVE_GAUGES = {
    "queue_depth": ("gemmserve_queue_depth", "Images waiting for the engine"),
    "running": ("gemmserve_batch_running_images", "Images in the batch being run now"),
    "ready": ("gemmserve_ready", "1 when the service admits requests"),
    "slowdown": (
        "gemmserve_engine_slowdown_ratio",
        "Engine time per batch in service over its warm-up time (moving average)",
    ),
}


def process_dead(pid: int) -> None:
    """Forget a dead process's live gauges (its ``up`` and in-flight count); counters stay."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)


class _LiveGauges:
    """A collector that reads the moment's values when scraped."""

    def __init__(self, read: Callable[[], dict[str, float]]):
        self.read = read

    def collect(self):
        values = self.read()
        for key, (name, text) in LIVE_GAUGES.items():
            yield GaugeMetricFamily(name, text, value=float(values.get(key, 0.0)))


class Metrics:
    """The service's collectors; implements the batcher's ``Observer``. ``kind`` names this
    process (supervisor, engine, worker) in ``gemmserve_up``."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, kind: str) -> None:
        # Declarations only: in multiprocess mode the values live in the shared directory.
        self.registry = CollectorRegistry()
        reg = self.registry
        self.request_duration = self._seconds(
            "gemmserve_request_duration_seconds",
            "HTTP request latency by route template, status and model",
            ["route", "status", "model"],
        )
        self.queue_wait = self._seconds(
            "gemmserve_queue_wait_seconds",
            "Time an image waited in the queue before its batch started",
            ["model"],
        )
        self.batch_size = Histogram(
            "gemmserve_batch_size",
            "Images per engine batch",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=reg,
        )
        self.inference_duration = self._seconds(
            "gemmserve_inference_duration_seconds", "Engine time per batch", ["model"]
        )
        self.rejected = Counter(
            "gemmserve_requests_rejected",
            "Images refused or dropped before inference, by reason and model",
            ["reason", "model"],
            registry=reg,
        )
        self.images = Counter(
            "gemmserve_images", "Images run by the engine", ["model"], registry=reg
        )
        self.batch_splits = Counter(
            "gemmserve_batch_splits",
            "Failed batches split in halves and retried, by reason (oom, error) and model",
            ["reason", "model"],
            registry=reg,
        )
        self.inflight = self._gauge(
            "gemmserve_requests_in_flight", "Inference requests being served", "livesum"
        )
        up = self._gauge("gemmserve_up", "Running processes by kind", "livesum", ["process"])
        up.labels(process=kind).set(1)

    def add_model(self, model: str) -> None:
        """Write a model's reject and split series (as 0): each is in a scrape before its first
        event. ``model`` is a served model's name (names are checked: bounded, label-safe)."""
        for reason in REJECT_REASONS:
            self.rejected.labels(reason=reason, model=model)
        for reason in SPLIT_REASONS:
            self.batch_splits.labels(reason=reason, model=model)

    def _seconds(self, name: str, text: str, labels: tuple | list = ()) -> Histogram:
        return Histogram(name, text, labels, buckets=LATENCY_BUCKETS_S, registry=self.registry)

    def _gauge(self, name: str, text: str, mode: str, labels: tuple | list = ()) -> Gauge:
        return Gauge(name, text, labels, registry=self.registry, multiprocess_mode=mode)

    def set_autotune(self, info: dict, model: str) -> None:
        """A model's autotuner counters after warm-up (tuning happens at load, so they stay)."""
        if not hasattr(self, "autotune_choices"):
            self.autotune_choices = self._gauge(
                "gemmserve_autotune_choices",
                "Conv algorithm choices at load, by where they came from",
                "livemax",
                ["source", "model"],
            )
            self.autotune_tuning = self._gauge(
                "gemmserve_autotune_tuning_seconds",
                "Time spent timing candidates at load",
                "livemax",
                ["model"],
            )
        for source in ("hits", "misses", "defaults", "fallbacks"):
            value = float(info.get(source, 0))
            self.autotune_choices.labels(source=source, model=model).set(value)
        tuning_s = float(info.get("tuning_seconds", 0.0))
        self.autotune_tuning.labels(model=model).set(tuning_s)

    def set_queue_depths(self, depths: dict[str, int]) -> None:
        """Each served model's queued images (the engine, when they change); a model no longer
        served reads 0."""
        if not hasattr(self, "model_queue_depth"):
            self.model_queue_depth = self._gauge(
                "gemmserve_model_queue_depth",
                "Images waiting for the engine, by model (gemmserve_queue_depth is their total)",
                "livemax",
                ["model"],
            )
            self._depth_models: set[str] = set()
        for model in self._depth_models - set(depths):
            self.model_queue_depth.labels(model=model).set(0)
        for model, depth in depths.items():
            self.model_queue_depth.labels(model=model).set(depth)
        self._depth_models = set(depths)

    def set_gpu_memory(self, memory: dict) -> None:
        """On a GPU only: device memory in use (by anything on the device), and its total."""
        if not hasattr(self, "gpu_used"):
            self.gpu_used = self._gauge(
                "gemmserve_gpu_memory_used_bytes",
                "GPU memory in use on the device (total minus free: all processes and contexts)",
                "livemax",
            )
            self.gpu_total = self._gauge(
                "gemmserve_gpu_memory_total_bytes", "GPU memory of the device", "livemax"
            )
        total = float(memory["device_total_bytes"])
        self.gpu_used.set(total - float(memory["device_free_bytes"]))
        self.gpu_total.set(total)

    def observe_request(self, route: str, status: int, seconds: float, model: str = "") -> None:
        """One HTTP request; ``model``: the served model it was for ("" for none)."""
        labels = self.request_duration.labels(route=route, status=str(status), model=model)
        labels.observe(seconds)

    def on_batch(self, stats: BatchStats, model: str) -> None:
        self.batch_size.labels(model=model).observe(stats.size)
        self.inference_duration.labels(model=model).observe(stats.inference_s)
        self.images.labels(model=model).inc(stats.size)
        waits = self.queue_wait.labels(model=model)
        for wait_s in stats.queue_wait_s:
            waits.observe(wait_s)

    def on_reject(self, reason: str, count: int, model: str = "") -> None:
        self.rejected.labels(reason=reason, model=model).inc(count)

    def on_split(self, reason: str, model: str) -> None:
        self.batch_splits.labels(reason=reason, model=model).inc()

    def render(self, live: Callable[[], dict[str, float]]) -> bytes:
        """The Prometheus text exposition of the whole service; ``live()`` gives the moment's
        queue depth, running images and readiness."""
        if os.environ.get(MULTIPROC_ENV):
            stored = multiprocess.MultiProcessCollector(None)
        else:  # one process alone (a tool, or a test calling the app directly)
            stored = self.registry
        return generate_latest(_Sources(stored, _LiveGauges(live)))


class _Sources:
    """Several collectors scraped as one registry."""

    def __init__(self, *sources):
        self.sources = sources

    def collect(self):
        for source in self.sources:
            yield from source.collect()
