"""Shared memory between the processes: each worker's slot arena, and the supervisor's board.

A worker writes each decoded image into a slot of its own arena; the engine reads the image from
there and writes the image's output back into the same slot. Only slot numbers travel in the
control messages, never pixel data. A slot is the worker's again only after the engine answered
for it (or died), so the engine never writes into a slot that a newer request owns.

The board is a few integers every process can read without a message: the processes' ids (for
``GET /model``) and the engine's queue depth (for admission before a body is read).

Segments are named ``gemmserve-<supervisor pid>-...`` so the supervisor can remove every one it
or its children made, also those of a child killed before it could clean up.
"""

from __future__ import annotations

import _posixshmem
import contextlib
import math
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import numpy as np

SHM_DIR = Path("/dev/shm")
FLOAT_BYTES = 4


def segment_prefix(supervisor_pid: int) -> str:
    """The name prefix of every segment a service (supervisor ``supervisor_pid``) makes."""
    return f"gemmserve-{supervisor_pid}-"


def _untracked(name: str, create: bool, size: int = 0) -> SharedMemory:
    """A segment left out of multiprocessing's resource tracker: the supervisor owns its removal
    (Python 3.11's tracker would also unlink segments that a process merely attached to)."""
    shm = SharedMemory(name=name, create=create, size=size)
    with contextlib.suppress(Exception):  # not tracked on every platform
        resource_tracker.unregister(shm._name, "shared_memory")  # noqa: SLF001
    return shm


def unlink(name: str) -> None:
    """Remove a segment by name; nothing if it is gone already. (Not ``SharedMemory.unlink``:
    it would also tell the resource tracker, which no longer tracks these segments.)"""
    with contextlib.suppress(FileNotFoundError):
        _posixshmem.shm_unlink("/" + name.lstrip("/"))


def remove_all(prefix: str) -> list[str]:
    """Remove every segment whose name starts with ``prefix``; the names removed."""
    removed = []
    for path in SHM_DIR.glob(prefix + "*") if SHM_DIR.is_dir() else ():
        unlink(path.name)
        removed.append(path.name)
    return removed


class SlotArena:
    """``count`` fixed-size float32 slots, each big enough for one image's input or output."""

    def __init__(self, shm: SharedMemory, slot_floats: int, count: int, owner: bool):
        self.shm = shm
        self.name = shm.name
        self.slot_floats = slot_floats
        self.count = count
        self.owner = owner
        self._floats = np.ndarray((count * slot_floats,), np.float32, buffer=shm.buf)
        # Most recently freed first: a light load keeps touching the same few pages.
        self._free = list(range(count - 1, -1, -1))

    @classmethod
    def create(cls, name: str, slot_floats: int, budget_bytes: int, least: int) -> SlotArena:
        """A new arena within ``budget_bytes`` (but at least ``least`` slots)."""
        count = max(least, budget_bytes // (slot_floats * FLOAT_BYTES))
        shm = _untracked(name, create=True, size=count * slot_floats * FLOAT_BYTES)
        return cls(shm, slot_floats, count, owner=True)

    @classmethod
    def attach(cls, name: str, slot_floats: int, count: int) -> SlotArena:
        """Map an arena another process made."""
        return cls(_untracked(name, create=False), slot_floats, count, owner=False)

    @property
    def free(self) -> int:
        """Slots not held by any request."""
        return len(self._free)

    def take(self, count: int) -> list[int] | None:
        """``count`` free slots, or None when fewer are free."""
        if count > len(self._free):
            return None
        return [self._free.pop() for _ in range(count)]

    def give_back(self, slots: list[int]) -> None:
        self._free.extend(slots)

    def reset(self) -> None:
        """Every slot free again (the engine that held some is gone)."""
        self._free = list(range(self.count - 1, -1, -1))

    def view(self, slot: int, shape: tuple[int, ...]) -> np.ndarray:
        """The first ``prod(shape)`` floats of ``slot``, shaped (no copy)."""
        start = slot * self.slot_floats
        return self._floats[start : start + math.prod(shape)].reshape(shape)

    def close(self) -> None:
        """Unmap; the owner also removes the segment."""
        self._floats = np.empty(0, np.float32)  # drop the buffer export before closing
        with contextlib.suppress(BufferError):
            self.shm.close()
        if self.owner:
            unlink(self.name)


class Board:
    """Integers every process reads without a message: process ids (the supervisor writes
    them), the queue depth, the images running and the engine's slowdown (the engine writes
    those)."""

    # SLOWDOWN: engine time per batch over its warm-up time, in thousandths (an average).
    SUPERVISOR, ENGINE, DEPTH, RUNNING, SLOWDOWN, WORKERS = 0, 1, 2, 3, 4, 5

    def __init__(self, shm: SharedMemory, workers: int, owner: bool):
        self.shm = shm
        self.name = shm.name
        self.workers = workers
        self.owner = owner
        self.cells = np.ndarray((self.WORKERS + workers,), np.int64, buffer=shm.buf)

    @classmethod
    def create(cls, prefix: str, workers: int) -> Board:
        size = (cls.WORKERS + workers) * 8
        board = cls(_untracked(prefix + "board", create=True, size=size), workers, owner=True)
        board.cells[:] = 0
        return board

    @classmethod
    def attach(cls, name: str, workers: int) -> Board:
        return cls(_untracked(name, create=False), workers, owner=False)

    def processes(self) -> dict:
        """``{"supervisor": pid, "engine": pid, "workers": [pid, ...]}`` (0: not running)."""
        cells = self.cells.tolist()
        return {
            "supervisor": cells[self.SUPERVISOR],
            "engine": cells[self.ENGINE],
            "workers": cells[self.WORKERS :],
        }

    def close(self) -> None:
        self.cells = np.empty(0, np.int64)
        with contextlib.suppress(BufferError):
            self.shm.close()
        if self.owner:
            unlink(self.name)
