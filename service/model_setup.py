"""The model's set-up in the engine process: load, warm every bucket, self-test, cross-check,
describe.

``setup_model`` is the whole sequence, in order, on the engine thread (the only thread that
touches the model); a check to add at start-up goes there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import engine
from service.config import Settings
from service.modelspec import load_spec, locate, read_meta
from service.protocol import ModelDescription
from service.repository import ModelEntry, cache_file

log = logging.getLogger("gemmserve.engine")

ModelFactory = Callable[[Settings], Any]


def own_batching(settings: Settings, entry: ModelEntry) -> dict:
    """The model's own ``batch_sizes`` / ``max_batch_size`` from its ``model.json`` (the
    service's otherwise), as settings updates."""
    meta = read_meta(locate(entry.path)[1])
    if not meta.batch_sizes and not meta.max_batch_size:
        return {}
    sizes = tuple(sorted(set(meta.batch_sizes or settings.batch_sizes)))
    largest = meta.max_batch_size or (max(sizes) if meta.batch_sizes else settings.max_batch_size)
    if largest > max(sizes):
        raise ValueError(f"model.json max_batch_size {largest} exceeds the largest of {sizes}")
    return {"batch_sizes": sizes, "max_batch_size": largest}


def model_settings(settings: Settings, entry: ModelEntry) -> Settings:
    """The settings one model is loaded with: its own path, and its own autotune cache file
    when the service keeps one per model (a warning, and tuning kept in memory, when the cache
    directory cannot be made)."""
    update: dict = {"model": (entry.path,), **own_batching(settings, entry)}
    if settings.cache_per_model and settings.autotune_cache is not None:
        try:
            settings.autotune_cache.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("autotune cache directory unusable (%s); tuning kept in memory", exc)
        update["autotune_cache"] = cache_file(settings.autotune_cache, entry)
    return settings.model_copy(update=update)


def load_engine_model(settings: Settings) -> Any:
    """The default model factory: the engine, on the configured device and batch buckets
    (``settings`` as ``model_settings`` made them for one model)."""
    onnx_path, _, _ = locate(settings.model[0])
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


def memory_bytes(model: Any) -> dict[str, int]:
    """What the model holds on its device: its weights (as the engine keeps them) and the
    activation buffers and scratch workspace its batch buckets share."""
    constants = getattr(model, "constants", None) or {}
    arenas = getattr(model, "arenas", None) or []  # one per batch slice run at once
    return {
        "weights_bytes": sum(int(getattr(c, "nbytes", 0)) for c in constants.values()),
        "workspace_bytes": sum(int(arena.nbytes) for arena in arenas),
    }


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to serve, its description for the workers and its batch cost model."""

    model: Any
    description: ModelDescription
    cost_s: Callable[[int], float] | None  # seconds for a batch of n; None without timings


def setup_model(settings: Settings, factory: ModelFactory | None = None) -> LoadedModel:
    """Load, warm every bucket, self-test, cross-check (on a GPU, or when asked), then describe
    the model (engine thread only). ``settings`` name one model (``model_settings``)."""
    started = time.monotonic()
    model = (factory or load_engine_model)(settings)
    spec = load_spec(settings.model[0], tuple(model.input_shape))
    # Twice: the first run tunes and plans, the second times each bucket for the batcher.
    seconds = bucket_seconds(model.warmup(), model.warmup())
    self_test(model)
    if settings.cross_check == "always" or model.device == "cuda":
        model.cross_check()  # CrossCheckError: the service refuses to start, saying where
    cost_s = None
    if set(seconds) >= set(model.batch_sizes):
        cost_s = lambda n: seconds[model.bucket_for(n)]  # noqa: E731
    description = ModelDescription(
        spec=spec,
        input_name=model.input_name,
        input_shape=tuple(model.input_shape),
        output_name=model.output_name,
        output_shape=tuple(model.output_shape),
        device=model.device,
        info={**model.info(), "memory": memory_bytes(model)},
        bucket_seconds=seconds,
        max_batch_size=settings.max_batch_size,
    )
    log.info("model %s ready on %s in %.1f s", spec.name, model.device, time.monotonic() - started)
    return LoadedModel(model, description, cost_s)
