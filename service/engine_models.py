"""The engine process's models: each one's queue and state, and loading, reloading and
unloading them while the others serve.

A reload loads the new version beside the old one (warm-up and self-test included) while the
old one keeps serving; then one catalog message switches every worker to the new version at
once. Requests the workers sent before they saw the switch still name the old version and are
run by it; once every worker has acknowledged the switch, none can arrive any more, so the old
version drains its queue and is dropped (its memory freed). A load that fails leaves the old
version serving, and the failure is the load request's answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from service import protocol
from service.batcher import Batcher, BatchStats
from service.errors import ModelNotFound, ModelTooLarge, ModelUnavailable, NotReadyError
from service.memory import MemoryEstimate, check_fits, estimate
from service.model_setup import model_settings, setup_model
from service.repository import ModelEntry, RepositoryError

if TYPE_CHECKING:
    from service.engine_proc import EngineHost

log = logging.getLogger("gemmserve.engine")
ACK_POLL_S = 0.005


class ServedModel:
    """One model in the engine: its queue, its state and, once loaded, the model itself. Also
    its batcher's observer (metrics labelled with the model's name, and the slowdown)."""

    def __init__(self, host: EngineHost, entry: ModelEntry, version: int = 1):
        self.host, self.entry, self.name, self.version = host, entry, entry.name, version
        self.state, self.reason = protocol.LOADING, ""
        self.error: Exception | None = None  # why it failed to load
        self.need: MemoryEstimate | None = None  # its estimated bytes, once it was found to fit
        self.description: protocol.ModelDescription | None = None
        self.model: Any = None
        self.cost_s: Callable[[int], float] | None = None
        s = host.settings
        self.batcher = Batcher(
            self._setup,
            max_batch_size=s.max_batch_size,
            max_queue=s.max_queue,
            max_delay_ms=s.max_delay_ms,
            retry_after_s=s.retry_after_s,
            observer=self,
            scheduler=host.scheduler,
        )
        host.metrics.add_model(self.name)

    def _setup(self) -> Callable[[np.ndarray], list[np.ndarray]]:
        """Runs on the engine thread: the model's whole set-up, then the batch function."""
        settings = model_settings(self.host.settings, self.entry)
        self.batcher.max_batch_size = settings.max_batch_size  # the model's own, if it has one
        need = self._check_memory(settings)
        loaded = setup_model(settings, self.host.args.model_factory)
        if need is not None:
            loaded.description.info["memory"]["estimated_bytes"] = need.total_bytes
        if loaded.cost_s is not None:
            self.batcher.set_cost_model(loaded.cost_s)
            self.cost_s = loaded.cost_s
        autotune = dict(loaded.description.info.get("autotune") or {})
        self.host.metrics.set_autotune(autotune, self.name)
        self.model = loaded.model
        self.description = dataclasses.replace(loaded.description, version=self.version)
        model = loaded.model
        # A copy: the engine reuses its output buffer for the next batch.
        return lambda x: list(np.array(model(x), np.float32, copy=True))

    def _check_memory(self, settings) -> MemoryEstimate | None:
        """Refuse (``ModelTooLarge``) before allocating anything when the model would not fit;
        else its estimate, which counts against ``--memory-limit-mib`` from now on. Runs on the
        engine thread, so the models loaded before it already hold their memory. A file ONNX
        cannot read is left to the engine, whose error says more."""
        try:
            need = estimate(self.entry.onnx_path, max(settings.effective_batch_sizes))
        except Exception as exc:  # noqa: BLE001 - the engine's load reports it
            log.debug("no memory estimate for %s: %s", self.name, exc)
            return None
        others = self.host.table.reserved_bytes(self)
        check_fits(self.name, need, others, settings.device, settings.memory_limit_mib)
        self.need = need
        return need

    async def load(self) -> None:
        """Load on the engine thread; a failure fails this model alone, with its reason."""
        try:
            await self.batcher.start()
        except Exception as exc:  # noqa: BLE001 - reported as the model's state
            log.error("model failed to load (%s): %s: %s", self.name, type(exc).__name__, exc)
            log.debug("model load traceback", exc_info=exc)
            self.state, self.reason = protocol.FAILED, f"{type(exc).__name__}: {exc}"
            self.error = exc
            return
        self.state = protocol.READY

    def status(self) -> protocol.ModelStatus:
        return protocol.ModelStatus(self.name, self.state, self.reason, self.description)

    def check_serving(self) -> protocol.ModelDescription:
        """The description, when the model answers requests; its error otherwise."""
        if self.state in (protocol.READY, protocol.UNLOADING):  # unloading: draining its queue
            return self.description
        if self.state == protocol.FAILED:
            raise ModelUnavailable(f"model {self.name!r} failed to load: {self.reason}")
        retry_s = self.host.settings.retry_after_s
        raise NotReadyError(f"model {self.name!r} is {self.state}", retry_s)

    # ---- the batcher's observer: metrics, and the slowdown the workers' admission reads ----

    def on_batch(self, stats: BatchStats) -> None:
        self.host.metrics.on_batch(stats, self.name)
        if self.cost_s is not None:
            self.host.on_slowdown(stats.inference_s / max(self.cost_s(stats.size), 1e-9))

    def on_reject(self, reason: str, count: int) -> None:
        self.host.metrics.on_reject(reason, count, self.name)

    def on_split(self, reason: str) -> None:
        self.host.metrics.on_split(reason, self.name)


class ModelTable:
    """Every model by name, the versions still draining after a reload or unload, and the
    catalog the workers learn them from. Used from the engine's loop only."""

    def __init__(self, host: EngineHost):
        self.host = host
        self.models: dict[str, ServedModel] = {}
        self.retiring: dict[tuple[str, int], ServedModel] = {}
        self.settled = False
        self.serial = 0  # of the newest catalog
        self._control = asyncio.Lock()  # one load or unload at a time

    def catalog(self) -> protocol.Catalog:
        models = {name: served.status() for name, served in self.models.items()}
        return protocol.Catalog(models, self.settled, self.serial)

    def broadcast(self) -> int:
        """Every worker learns every model's state; the catalog's serial."""
        self.serial += 1
        message = (protocol.CATALOG, self.catalog())
        for link in self.host.links:
            link.send(message)
        return self.serial

    def reserved_bytes(self, besides: ServedModel) -> int:
        """The estimated bytes of every model but ``besides`` that holds (or is loading) its
        memory: the current versions and those still draining. Read from the engine thread."""
        held = [*list(self.models.values()), *list(self.retiring.values())]
        return sum(
            m.need.total_bytes
            for m in held
            if m is not besides and m.need is not None and m.state != protocol.FAILED
        )

    def find(self, name: str, version: int) -> ServedModel:
        """The model version a request names (the current one, or one still draining)."""
        served = self.models.get(name)
        if served is not None and served.version != version:
            served = self.retiring.get((name, version), served)
        if served is None:
            raise ModelNotFound(f"model {name!r} is not served here")
        return served

    async def load_all(self) -> bool:
        """Load every model of the settings, reporting each as it settles; any ready?"""
        for entry in self.host.settings.entries():
            self.models[entry.name] = ServedModel(self.host, entry)

        async def load(served: ServedModel) -> None:
            await served.load()
            self.broadcast()

        await asyncio.gather(*(load(served) for served in self.models.values()))
        self.settled = True
        self.broadcast()
        return any(m.state == protocol.READY for m in self.models.values())

    async def load(self, name: str) -> None:
        """Load (or reload) ``name`` from the repository as it is now."""
        try:
            entry = next((e for e in self.host.settings.entries() if e.name == name), None)
        except RepositoryError as exc:
            raise ModelUnavailable(f"the repository cannot be read: {exc}") from None
        if entry is None:
            raise ModelNotFound(f"model {name!r} is not in the repository")
        async with self._control:
            old = self.models.get(name)
            new = ServedModel(self.host, entry, version=old.version + 1 if old else 1)
            if old is None or old.state != protocol.READY:
                self.models[name] = new
                self.broadcast()  # loading
                if old is not None:  # a failed version: nothing queued, its lane goes
                    await asyncio.to_thread(old.batcher.close, 0)
            await new.load()
            if new.state == protocol.FAILED:
                await asyncio.to_thread(new.batcher.close, 0)
                kind = ModelTooLarge if isinstance(new.error, ModelTooLarge) else ModelUnavailable
                if old is not None and old.state == protocol.READY:
                    raise kind(f"model {name!r} reload failed (still serving the previous "
                               f"version): {new.reason}")  # fmt: skip
                self.broadcast()
                raise kind(f"model {name!r} failed to load: {new.reason}")
            self.models[name] = new
            if old is not None:
                await self._retire(old, self.broadcast())
            else:
                self.broadcast()
            log.info("model %s version %d loaded", name, new.version)

    async def unload(self, name: str) -> None:
        """Stop serving ``name``: new requests are refused, queued ones finish, memory freed."""
        async with self._control:
            served = self.models.pop(name, None)
            if served is None:
                raise ModelNotFound(f"model {name!r} is not served here")
            await self._retire(served, self.broadcast())
            log.info("model %s unloaded", name)

    async def _retire(self, old: ServedModel, serial: int) -> None:
        """Drain and drop ``old`` once every worker has seen catalog ``serial`` (after that no
        request for it can arrive)."""
        old.state = protocol.UNLOADING
        self.retiring[(old.name, old.version)] = old
        while any(link.acked < serial for link in self.host.links if not link.closed):
            await asyncio.sleep(ACK_POLL_S)
        await asyncio.to_thread(old.batcher.close, self.host.settings.graceful_shutdown_s)
        del self.retiring[(old.name, old.version)]
        old.model = None  # the last reference: its weights and workspaces are freed
