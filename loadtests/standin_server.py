"""``python -m loadtests.standin_server --batch-ms T -- [service flags]``: the real service whose
engine is a stand-in for a fast GPU: every batch costs a fixed sleep (no CPU, no GIL held).

For benchmarks only (``compare_servers``' "stand-in" rows): with the engine out of the way, what
the HTTP tier alone delivers, and how it scales with ``--workers``. The model is still loaded
(shapes, warm-up, self-test: the usual start-up), but batches never reach it; outputs are
random.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np

from service.__main__ import main
from service.model_setup import load_engine_model


class SleepingModel:
    """The real model's description; ``__call__`` sleeps ``batch_ms`` and answers each image
    with its own first values (finite, and the same alone or in a batch: the self-test passes)."""

    def __init__(self, model, batch_ms: float):
        self._model = model
        self._batch_s = batch_ms / 1000.0

    def __getattr__(self, name):
        return getattr(self._model, name)

    def warmup(self) -> list[dict]:
        return [{"bucket": b, "seconds": self._batch_s} for b in self._model.batch_sizes]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        time.sleep(self._batch_s)
        flat = x.reshape(len(x), -1)
        size = math.prod(self._model.output_shape)
        rows = np.tile(flat, -(-size // flat.shape[1]))[:, :size]
        return rows.reshape(len(x), *self._model.output_shape).astype(np.float32)


class SleepingFactory:
    """Picklable: it travels to the engine process."""

    def __init__(self, batch_ms: float):
        self.batch_ms = batch_ms

    def __call__(self, settings):
        return SleepingModel(load_engine_model(settings), self.batch_ms)


def run(argv: list[str]) -> int:
    split = argv.index("--")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-ms", type=float, default=2.0)
    args = parser.parse_args(argv[:split])
    return main(argv[split + 1 :], model_factory=SleepingFactory(args.batch_ms))


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
