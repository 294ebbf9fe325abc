"""Lanes: one forward pass's compiled steps split across the cores without the GIL.

Below one image per core (batch 1: latency) a plan has no batch to split (engine/split.py), so
each conv's output rows are split across the cores instead. Handing each layer's halves to a
Python worker costs a thread wake-up and a GIL hand-off (0.1-0.2 ms measured here) per layer,
more than a small layer gains. Lanes do it without Python: a run of compiled steps
(engine/chain.py) is generated as one function whose body every lane of a job runs at once,
each its shares of every step (``Op.lane_phases``), meeting at a spin barrier between steps
(engine/spin.py). Lane 0 is the engine's own thread; lanes 1.. are this module's threads,
which wait in compiled code (``LaneChain.serve``), spinning for the next job for up to
``SPIN_S``, then in Python on an Event, where they cost nothing.

A pass never waits for a thread's wake-up: the engine's thread posts a job (``spin.post``) to
the lanes spinning at that moment only, and deals the shares round-robin to them and itself
(alone, it runs every share in order). A sleeping lane is woken for the next pass instead. So
a lone request after a pause runs on one core as before lanes; back-to-back passes, as under
load or in a burst, run on every core.

State per lane thread (``ctrl[lane * STRIDE]``): SLEEP -> WAKING (a post found it asleep; its
thread is woken) -> SPIN (back in compiled code) -> CLAIMED -> GO (a post gives it a job and
its rank) -> SPIN (done) ... -> SLEEP (spun for SPIN_S, nothing came: the lane itself swaps
SPIN for SLEEP, so a post never slips past it). ``ctrl[JOB]`` names the posted chain; a lane
spinning in another chain's ``serve`` returns to Python to switch.

On at most ``MAX_LANES`` cores.
"""

from __future__ import annotations

import contextlib
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


#: elements below which a step is one share: a lane barrier (about 1 us) costs more than the
#: other lanes save on less
MIN_SHARE = 1 << 14


def shares(count: int, lanes: int, elems: int | None = None, min_share: int = MIN_SHARE,
           align: int = 1) -> list[tuple[int, int]]:  # fmt: skip
    """Near-equal [start, stop) ranges covering ``count`` items (rows, elements, output
    features), one per lane's share: up to ``lanes`` of them, fewer where the step's work
    (``elems`` elements) gives each less than ``min_share``; inner boundaries on multiples of
    ``align`` (whole cache lines, so that no two lanes write one)."""
    parts = min(lanes, max(count // align, 1))
    if elems is not None:
        parts = min(parts, elems // min_share)
    parts = max(parts, 1)
    edges = [0, *(count * i // parts // align * align for i in range(1, parts)), count]
    return list(zip(edges[:-1], edges[1:]))


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
        self.ctrl[spin.SPINS] = self.spins
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
        """``chain``'s body on this thread (rank 0) and the lanes spinning now; returns when
        all are done. Sleeping lanes are woken for the next call."""
        with self.lock:
            if self._idle is None:
                self.idle()  # compiled before any lane can need it
            # the post, the job and ctrl[BUSY] around it in one compiled call
            if chain.lead(0) == self.spin.WOKE:  # it found sleeping lanes, and ran nothing
                for lane in np.flatnonzero(self.woken[1:]) + 1:
                    self.events[lane].set()
                # lanes woken now spin through this job (it may outlast SPIN_S) for the next
                chain.lead(int(self.ctrl[self.spin.PARTS]))

    def idle(self):
        """The chain of no steps: what a woken lane serves until a job comes."""
        if self._idle is None:
            from engine.chain import LaneChain

            self._idle = LaneChain([], [])
        return self._idle

    @contextlib.contextmanager
    def held(self, wait_s: float = 0.0):
        """The lane threads spinning throughout (woken now if asleep; waited for up to
        ``wait_s``): a forward pass runs in this, so that lanes do not fall asleep during
        its steps outside the lane chains (a ResNet-18's BLAS layers take longer than
        SPIN_S), and the tuner times a conv alone in it with ``wait_s``, as between the
        passes of a busy engine (its cache evictions take longer than SPIN_S too)."""
        self.ctrl[self.spin.SPINS] = 1 << 62
        try:
            if self._sleeping():
                self.run(self.idle())  # finds them asleep: wakes them
            deadline = time.perf_counter() + wait_s
            while self._sleeping() and time.perf_counter() < deadline:
                time.sleep(0)
            yield
        finally:
            self.ctrl[self.spin.SPINS] = self.spins

    def _sleeping(self) -> bool:
        states = self.ctrl[self.spin.STRIDE :: self.spin.STRIDE]
        return bool((states != self.spin.SPIN).any())

    def _work(self, lane: int) -> None:
        """A lane thread: sleep until woken, then serve posted jobs until idle for SPIN_S."""
        event = self.events[lane]
        while True:
            event.wait()
            event.clear()
            switching = True
            while switching:  # a job for another chain: serve that one
                chain = self.chains.get(int(self.ctrl[self.spin.JOB])) or self._idle
                switching = chain.serve(lane)


@functools.cache
def lanes() -> Lanes:
    """The process's lane threads (started on first use)."""
    return Lanes(lane_count())


def held(wait_s: float = 0.1):
    """``Lanes.held`` where this process has lanes, else a context that does nothing."""
    return lanes().held(wait_s) if available() else contextlib.nullcontext()
