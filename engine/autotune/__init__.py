"""Per-layer conv algorithm choice (placeholder: heuristic defaults only, tuning lands next)."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.conv import ALGORITHMS, ConvAlgorithm, ConvSpec, default_algorithm

MODES = ("off", "readonly", "tune-missing", "force")


@dataclass
class Choice:
    """The algorithm picked for one (layer, bucket), where the pick came from, and fallbacks."""

    algorithm: ConvAlgorithm
    source: str  # "cache" | "tuned" | "default"
    runners_up: list[str] = field(default_factory=list)


class Autotuner:
    def __init__(self, backend, cache_path=None, mode: str = "tune-missing", allow_tf32=False):
        if mode not in MODES:
            raise ValueError(f"autotune mode must be one of {MODES}, got {mode!r}")
        self.backend, self.cache_path, self.mode = backend, cache_path, mode

    def choose(self, spec: ConvSpec, weight, bias) -> Choice:
        name = default_algorithm(spec)
        return Choice(ALGORITHMS[name](spec, weight, bias, self.backend), "default")

    def save(self) -> None:
        pass

    def info(self) -> dict:
        return {"mode": self.mode, "cache": self.cache_path}
