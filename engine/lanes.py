"""Lanes: one forward pass's compiled steps split across the cores without the GIL.

Below one image per core (batch 1: latency) a plan has no batch to split (engine/split.py), so
each conv's output rows are split across the cores instead. Handing each layer's halves to a
Python worker costs a thread wake-up and a GIL hand-off (0.1-0.2 ms measured here) per layer,
more than a small layer gains. Lanes do it without Python: a run of compiled steps
(engine/chain.py) is generated as one ``body(sync, lane, lanes, ...)`` that every lane runs at
once, each its share of every step (``Op.lane_phases``), meeting at a spin barrier between
steps (engine/spin.py). Lane 0 is the engine's own thread; lanes 1.. are this module's
threads, which wait in compiled code (``serve``), spinning for the next job for up to
``SPIN_S``, then in Python on an Event, where they cost nothing. The engine's thread posts a
job in compiled code too (``spin.post``) and wakes only lanes that went to sleep.

State per lane thread (``ctrl[lane * STRIDE]``): SLEEP -> GO (posted, thread woken) -> SPIN
(done, spinning) -> GO (posted to a spinning lane) ... -> SLEEP (spun for SPIN_S, nothing came:
the lane itself swaps SPIN for SLEEP, so a post never slips past it). ``ctrl[JOB]`` names the
posted chain; a lane spinning in another chain's ``serve`` returns to Python to switch.

Only under ``cpu_threading="engine"`` (BLAS on the calling thread: no second spinning pool),
and on at most ``MAX_LANES`` cores.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
import weakref

import numpy as np

from engine.threads import cpu_cores

log = logging.getLogger("engine.lanes")

#: the most cores one batch-1 pass is split across (beyond that its layers are too small)
MAX_LANES = 8
#: how long an idle lane thread spins for the next job before it sleeps
SPIN_S = 0.0005


def lane_count() -> int:
    """Lanes a pass below one image per core is split into here (1: no lanes)."""
    return min(cpu_cores(), MAX_LANES)


def available() -> bool:
    """Whether this process splits compiled steps across lanes (numba there, >= 2 cores)."""
    from engine import jit

    return lane_count() >= 2 and jit.available()


class Lanes:
    """The lane threads of this process and their control words; ``run`` one chain at a time
    (two models' passes take turns: each would use every core anyway)."""

    def __init__(self, lanes: int):
        from engine import spin

        self.spin, self.count = spin, lanes
        self.ctrl = np.zeros(lanes * spin.STRIDE, np.int64)  # JOB, then each lane's state
        self.sync = np.zeros(lanes * spin.STRIDE, np.int64)  # each lane's barrier count
        self.woken = np.zeros(lanes, np.int64)
        self.lock = threading.Lock()
        self.events = [threading.Event() for _ in range(lanes)]
        self.chains: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self.ids = itertools.count(1)
        self.spins = self._spins_for(SPIN_S)
        self._idle = None  # the chain of no steps (``wake``)
        for lane in range(1, lanes):
            threading.Thread(target=self._work, args=(lane,), name=f"lane-{lane}",
                             daemon=True).start()  # fmt: skip

    def _spins_for(self, seconds: float) -> int:
        """How many turns of a spinning lane's loop take ``seconds`` on this CPU."""
        word = np.zeros(1, np.int64)
        self.spin.spin(word, 10)  # compiled (or loaded) before it is timed
        count = 200000
        started = time.perf_counter()
        self.spin.spin(word, count)
        per_spin = max((time.perf_counter() - started) / count, 1e-9)
        return max(int(seconds / per_spin), 1)

    def register(self, chain) -> int:
        job = next(self.ids)
        self.chains[job] = chain
        return job

    def run(self, chain) -> None:
        """``chain``'s body on every lane, this thread as lane 0; returns when all are done."""
        with self.lock:
            if self.spin.post(self.ctrl, self.count, chain.job, self.woken):
                for lane in np.flatnonzero(self.woken):
                    self.events[lane].set()
            chain.lead_call(self.sync, self.count)

    def wake(self) -> None:
        """Have every lane thread spinning now (for SPIN_S), as they are between the steps of a
        forward pass: the tuner calls this before it times a step alone."""
        if self._idle is None:
            from engine.chain import LaneChain

            self._idle = LaneChain([], [])
        self.run(self._idle)

    def _work(self, lane: int) -> None:
        """A lane thread: sleep until woken, then serve posted jobs until idle for SPIN_S."""
        event = self.events[lane]
        while True:
            event.wait()
            event.clear()
            switching = True
            while switching:  # a job for another chain: serve that one
                chain = self.chains.get(int(self.ctrl[self.spin.JOB]))
                if chain is None:  # cannot happen while its poster waits for this lane
                    log.error("lane %d: posted job %d is gone", lane, self.ctrl[0])
                    break
                switching = chain.serve(self.ctrl, self.sync, lane, self.count, self.spins)


@functools.cache
def lanes() -> Lanes:
    """The process's lane threads (started on first use)."""
    return Lanes(lane_count())


def wake() -> None:
    """``Lanes.wake`` where the lane threads have started (else there is nothing to wake)."""
    if lanes.cache_info().currsize:
        lanes().wake()
