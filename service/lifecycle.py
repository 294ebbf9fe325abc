"""Readiness and draining: which requests the service admits, and when it is safe to stop."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from service.errors import NotReadyError


class State(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


class Lifecycle:
    """Tracks the service state and the work in flight. Used from the event loop only."""

    def __init__(self, retry_after_s: int = 1, reason: str = "model loading"):
        self.state = State.STARTING
        self.reason = reason
        self.inflight = 0
        self.retry_after_s = retry_after_s
        # Set by whoever runs the server: asks it to stop (used when the model fails to load).
        self.request_exit: Callable[[], None] = lambda: None
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def ready(self) -> bool:
        return self.state is State.READY

    def set_ready(self) -> None:
        """Admit requests (unless draining or failed: those states are final)."""
        if self.state is State.STARTING:
            self.state, self.reason = State.READY, "ready"

    def set_unready(self, reason: str) -> None:
        """Stop admitting until ``set_ready`` (the engine is restarting)."""
        if self.state is State.READY:
            self.state, self.reason = State.STARTING, reason

    def set_failed(self, reason: str) -> None:
        self.state, self.reason = State.FAILED, reason
        self.request_exit()

    def start_draining(self) -> None:
        """Refuse new work from now on; work already admitted goes on."""
        if self.state is not State.FAILED:
            self.state, self.reason = State.DRAINING, "draining for shutdown"

    def check_ready(self) -> None:
        """Raise ``NotReadyError`` (503 + Retry-After) unless requests are being admitted."""
        if self.state is not State.READY:
            raise NotReadyError(f"not ready: {self.reason}", self.retry_after_s)

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Count one request in flight for its whole duration; refuse it when not ready."""
        self.check_ready()
        self.inflight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.inflight -= 1
            if self.inflight == 0:
                self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no admitted request is in flight; False if ``timeout_s`` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True
