"""``python -m tests.service.fault_server [fault flags] -- [service flags]``: the real service
around the real engine, wrapped to inject faults (for the reliability tests).

Faults: ``--poison V`` raises on any image whose first value equals V; ``--oom-above N`` reports
device out-of-memory for batches larger than N; ``--slow V --hold-file F`` holds a batch with an
image whose first value equals V while file F exists (at most 30 s); ``--delay-ms T`` sleeps on
every batch;
``--load-delay-s S`` makes loading take S seconds longer; ``--wrong-conv LAYER`` makes that conv
layer's output wrong (as a broken GPU kernel would: for the start-up cross-check).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from engine.errors import OutOfMemoryError
from service.__main__ import main
from service.model_setup import load_engine_model
from tests.engine.faults import break_conv


class FaultyModel:
    """A real engine model whose ``__call__`` misbehaves on request; everything else delegates."""

    def __init__(self, model, faults: argparse.Namespace):
        self._model = model
        self._faults = faults

    def __getattr__(self, name):
        return getattr(self._model, name)

    def warmup(self) -> list[dict]:
        """The engine's warm-up, with the injected per-call delay in its timings."""
        stats = self._model.warmup()
        return [{**s, "seconds": s["seconds"] + self._faults.delay_ms / 1000} for s in stats]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        f = self._faults
        firsts = x.reshape(len(x), -1)[:, 0]
        if f.delay_ms:
            time.sleep(f.delay_ms / 1000)
        if f.slow is not None and np.any(firsts == np.float32(f.slow)):
            end = time.monotonic() + 30
            while os.path.exists(f.hold_file) and time.monotonic() < end:
                time.sleep(0.002)
        if f.oom_above and len(x) > f.oom_above:
            raise OutOfMemoryError(f"injected: batch {len(x)} above {f.oom_above}")
        if f.poison is not None and np.any(firsts == np.float32(f.poison)):
            raise RuntimeError("injected: poisoned input")
        return self._model(x)


def parse_faults(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--poison", type=float)
    parser.add_argument("--oom-above", type=int, default=0)
    parser.add_argument("--slow", type=float)
    parser.add_argument("--hold-file", default="")
    parser.add_argument("--delay-ms", type=float, default=0)
    parser.add_argument("--load-delay-s", type=float, default=0)
    parser.add_argument("--wrong-conv", help="conv layer whose output is made wrong")
    return parser.parse_args(argv)


class FaultyFactory:
    """The model factory the engine process calls (picklable: it travels to that process)."""

    def __init__(self, faults: argparse.Namespace):
        self.faults = faults

    def __call__(self, settings):
        time.sleep(self.faults.load_delay_s)
        model = load_engine_model(settings)
        if self.faults.wrong_conv:
            break_conv(model, self.faults.wrong_conv)
        return FaultyModel(model, self.faults)


def run(argv: list[str]) -> int:
    split = argv.index("--")
    return main(argv[split + 1 :], model_factory=FaultyFactory(parse_faults(argv[:split])))


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
