"""Per-layer conv algorithm choice: timed on the device, checked, persisted.

For each conv spec (layer shape x batch bucket) the tuner times every applicable algorithm,
rejects any whose output strays from im2col_gemm's by more than its precision allows, and keeps
the fastest with its runners-up. Modes:

- ``off``: heuristic defaults, no file.
- ``readonly``: cache hits, else the heuristic default; never writes.
- ``tune-missing`` (default): cache hits, tune the misses, save.
- ``force``: tune everything again, save.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from engine.autotune import inpass
from engine.autotune.cache import CacheFile, make_header
from engine.autotune.measure import Timing, measure
from engine.conv import ALGORITHMS, REFERENCE, ConvAlgorithm, ConvSpec, candidates
from engine.conv import default_algorithm as heuristic_default

log = logging.getLogger("engine.autotune")

MODES = ("off", "readonly", "tune-missing", "force")
#: a candidate replaces the heuristic default only when at least this much faster: smaller
#: per-layer gains are within timing noise, and measured whole-net runs lost with them (other
#: layers' data leaves the cache differently than in the per-layer timing)
MIN_GAIN_OVER_DEFAULT = 1.05
SOURCES = ("cache", "tuned", "default", "fallback")


@dataclass
class Choice:
    """The algorithm picked for one (layer, bucket), where the pick came from, and fallbacks."""

    algorithm: ConvAlgorithm
    source: str  # one of SOURCES
    runners_up: list[str] = field(default_factory=list)
    ms: float | None = None  # the winner's tuned time, when it was timed
    weight: np.ndarray | None = field(default=None, repr=False, compare=False)
    bias: np.ndarray | None = field(default=None, repr=False, compare=False)
    #: workspace the planner holds for the runners-up timed in the pass (autotune/inpass.py)
    spare_elems: int = 0


@dataclass
class AutotuneStats:
    """Plain counters for metrics: where choices came from and what tuning cost."""

    hits: int = 0
    misses: int = 0
    defaults: int = 0
    fallbacks: int = 0
    tuning_seconds: float = 0.0
    saves: int = 0


class Autotuner:
    """Chooses a conv algorithm per spec; see the module docstring for the modes.

    ``budget_s`` bounds the timed runs of one candidate (after one warm-up run), ``max_repeats``
    their number: small layers get several runs, big ones one or two.
    """

    def __init__(
        self,
        backend,
        cache_path=None,
        mode: str = "tune-missing",
        allow_tf32: bool = False,
        budget_s: float = 0.05,
        max_repeats: int = 50,
    ):
        if mode not in MODES:
            raise ValueError(f"autotune mode must be one of {MODES}, got {mode!r}")
        self.backend, self.cache_path, self.mode = backend, cache_path, mode
        self.allow_tf32 = bool(allow_tf32)
        # NumPy has no TF32 GEMM: the permission only means something on a GPU
        gpu_tf32 = self.allow_tf32 and backend.device == "cuda"
        self.allowed_math = ("fp32", "tf32") if gpu_tf32 else ("fp32",)
        self.budget_s, self.max_repeats = budget_s, max_repeats
        self.stats = AutotuneStats()
        self.entries: dict[str, dict] = {}
        self.tuned_keys: set[str] = set()
        self.timings: dict[str, list[Timing]] = {}  # this process's measurements, by key
        self.dirty = False
        self.cache = None
        if mode != "off" and cache_path is not None:
            self.cache = CacheFile(cache_path, make_header(backend.fingerprint()))
            self.entries = self.cache.load()

    def key(self, spec: ConvSpec) -> str:
        """The cache key: the spec, with the math mode the user allowed."""
        if "tf32" in self.allowed_math:
            spec = dataclasses.replace(spec, math="tf32")
        return spec.key()

    def choose(self, spec: ConvSpec, weight, bias) -> Choice:
        """The algorithm for ``spec``, built with its re-laid weights."""
        if self.mode == "off":
            return self.default(spec, weight, bias)
        key = self.key(spec)
        reuse = self.mode != "force" or key in self.tuned_keys
        entry = self._valid_entry(key, spec) if reuse else None
        if entry is not None:
            self.stats.hits += 1
            source = "tuned" if key in self.tuned_keys else "cache"
            winner = ALGORITHMS[entry["winner"]](spec, weight, bias, self.backend)
            names = [r["name"] for r in entry["runners_up"]]
            spare = self._spare_elems(key, spec)
            return Choice(winner, source, names, entry.get("ms"), weight, bias, spare)
        self.stats.misses += 1
        if self.mode == "readonly":
            return self.default(spec, weight, bias)
        return self._tune(key, spec, weight, bias)

    def default(self, spec: ConvSpec, weight, bias) -> Choice:
        """The heuristic choice, with im2col_gemm (which runs anything) as its fallback."""
        self.stats.defaults += 1
        name = heuristic_default(spec)
        runners_up = [] if name == REFERENCE else [REFERENCE]
        algo = ALGORITHMS[name](spec, weight, bias, self.backend)
        return Choice(algo, "default", runners_up, None, weight, bias)

    def runner_up(self, choice: Choice, max_workspace_elems: int | None = None) -> Choice | None:
        """The next algorithm to try when ``choice`` failed at run time (e.g. out of memory),
        without re-tuning; None when no runner-up is left (or fits ``max_workspace_elems``)."""
        spec = choice.algorithm.spec
        for i, name in enumerate(choice.runners_up):
            cls = ALGORITHMS[name]
            if max_workspace_elems is not None and cls.workspace_elems(spec) > max_workspace_elems:
                continue
            self.stats.fallbacks += 1
            failed = choice.algorithm.name
            log.warning("autotune: %s failed on %s; using %s", failed, spec.key(), name)
            algo = cls(spec, choice.weight, choice.bias, self.backend)
            rest = choice.runners_up[i + 1 :]
            return Choice(algo, "fallback", rest, None, choice.weight, choice.bias)
        return None

    def _valid_entry(self, key: str, spec: ConvSpec) -> dict | None:
        """The cached entry for ``key`` if it names algorithms that can run ``spec`` here."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        try:
            names = [entry["winner"]] + [r["name"] for r in entry["runners_up"]]
            usable = all(self._usable(name, spec) for name in names)
        except (KeyError, TypeError) as error:
            usable, names = False, repr(error)
        if not usable:
            log.warning("autotune cache entry %s ignored: unusable here (%s)", key, names)
            del self.entries[key]
            return None
        return entry

    def _usable(self, name, spec: ConvSpec) -> bool:
        algo = ALGORITHMS.get(name) if isinstance(name, str) else None
        if algo is None or self.backend.device not in algo.devices:
            return False
        return algo.math in self.allowed_math and algo.applicable(spec)

    def _tune(self, key: str, spec: ConvSpec, weight, bias) -> Choice:
        names = candidates(spec, self.allowed_math, self.backend.device)
        started = time.perf_counter()
        timings, winner = measure(
            self.backend, spec, weight, bias, names, self.budget_s, self.max_repeats
        )
        self.stats.tuning_seconds += time.perf_counter() - started
        valid = sorted((t for t in timings if math.isfinite(t.ms)), key=lambda t: t.ms)
        if not valid:
            log.error("autotune: every candidate failed on %s; using the default", key)
            return self.default(spec, weight, bias)
        if prefer_default(valid, heuristic_default(spec)):
            winner = ALGORITHMS[valid[0].name](spec, weight, bias, self.backend)
        self.timings[key] = timings
        self.entries[key] = {
            "winner": valid[0].name,
            "ms": round(valid[0].ms, 4),
            "runners_up": [{"name": t.name, "ms": round(t.ms, 4)} for t in valid[1:]],
            "rejected": [{"name": t.name, "reason": t.reason} for t in timings if t not in valid],
        }
        self.tuned_keys.add(key)
        self.dirty = True
        runners_up = [t.name for t in valid[1:]]
        spare = self._spare_elems(key, spec)
        return Choice(winner, "tuned", runners_up, valid[0].ms, weight, bias, spare)

    def _spare_elems(self, key: str, spec: ConvSpec) -> int:
        """Workspace for the runners-up the in-pass check will try on a key tuned in this
        process (engine/autotune/inpass.py), for every layer of that key."""
        if key not in self.tuned_keys:
            return 0
        tried = inpass.tries(self.entries[key], spec, self.backend.device)
        return max((ALGORITHMS[name].workspace_elems(spec) for name in tried), default=0)

    def save(self) -> None:
        """Write new results to the cache file (tune-missing and force modes, only on change)."""
        if not self.dirty or self.cache is None or self.mode not in ("tune-missing", "force"):
            return
        if self.cache.save(self.entries):
            self.stats.saves += 1
            self.dirty = False

    def info(self) -> dict:
        """Mode, cache file and its status, and the counters (for model.info() and metrics)."""
        return {
            "mode": self.mode,
            "cache": None if self.cache_path is None else str(self.cache_path),
            "cache_status": "off" if self.cache is None else self.cache.status,
            "allow_tf32": self.allow_tf32,
            "entries": len(self.entries),
            **dataclasses.asdict(self.stats),
        }


def prefer_default(valid: list[Timing], default_name: str) -> bool:
    """Move the heuristic default to the front of ``valid`` (sorted by time) when the fastest
    beats it by less than MIN_GAIN_OVER_DEFAULT; True when that changed the winner."""
    default = next((t for t in valid if t.name == default_name), None)
    if default is None or valid[0] is default:
        return False
    if valid[0].ms * MIN_GAIN_OVER_DEFAULT <= default.ms:
        return False
    valid.remove(default)
    valid.insert(0, default)
    return True


__all__ = ["MODES", "SOURCES", "Autotuner", "AutotuneStats", "Choice"]
