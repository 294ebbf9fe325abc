"""Overlapped transfers: batch i+1 goes host -> device on a copy stream while batch i computes,
and results come back device -> host asynchronously, all through pinned (page-locked) buffers.

Each batch bucket has two slots (double buffering), each with a pinned input, a device input
and a pinned output, allocated once. A slot is reused only after its previous batch's result
has been copied out (its ``done`` event), so nothing is allocated per batch.

    copy stream:    H2D(i)  H2D(i+1)          H2D(i+2)
    compute stream:    wait -> D2D + forward(i) + D2H(i) -> wait -> forward(i+1) ...
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from engine.cuda.memory import as_engine_error


@dataclass
class Slot:
    host_in: np.ndarray  # pinned
    device_in: object
    host_out: np.ndarray  # pinned
    done: object = None  # cupy.cuda.Event: this slot's last result is on the host


def pinned_empty(cupy, shape, dtype=np.float32) -> np.ndarray:
    """A NumPy array in page-locked memory (DMA straight from it, asynchronously)."""
    import cupyx

    return cupyx.empty_pinned(shape, dtype=dtype)


class StreamedRunner:
    """Runs a CUDA model over a stream of batches with copies overlapped with compute.

    ``execute`` runs one plan (``GraphRunner.execute`` for graph replay, or ``plan.execute``).
    While ``map`` is being consumed, the next batch is already running on the model's buffers:
    nothing else may run the model until the iteration ends (the last result synchronises).
    """

    SLOTS_PER_BUCKET = 2

    def __init__(self, model, execute=None):
        self.model, self.cupy = model, model.backend.xp
        self.execute = execute or (lambda plan: plan.execute())
        self.copy_stream = self.cupy.cuda.Stream(non_blocking=True)
        self.compute_stream = self.cupy.cuda.Stream(non_blocking=True)
        self.slots: dict[int, list[Slot]] = {}
        self.launched: dict[int, int] = {}  # batches launched per bucket

    def slot(self, bucket: int) -> Slot:
        if bucket not in self.slots:
            shape_in = (bucket, *self.model.input_shape)
            shape_out = (bucket, *self.model.output_shape)
            self.slots[bucket] = [
                Slot(pinned_empty(self.cupy, shape_in), self.cupy.empty(shape_in, np.float32),
                     pinned_empty(self.cupy, shape_out))
                for _ in range(self.SLOTS_PER_BUCKET)
            ]  # fmt: skip
        self.launched[bucket] = self.launched.get(bucket, 0) + 1
        return self.slots[bucket][self.launched[bucket] % self.SLOTS_PER_BUCKET]

    def map(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Yield the model's output for each batch (at most the largest bucket), in order."""
        pending = None
        try:
            for x in batches:
                launched = self.launch(self.model._check_input(x))
                if pending is not None:
                    yield self.collect(*pending)
                pending = launched
            if pending is not None:
                yield self.collect(*pending)
        except Exception as error:
            mapped = as_engine_error(self.cupy, error, "out of memory while streaming batches")
            if mapped is error:
                raise
            raise mapped from error

    def launch(self, x: np.ndarray) -> tuple[Slot, int]:
        """Queue batch ``x``: its copy in, its forward pass and its copy out; returns at once."""
        n = len(x)
        bucket = self.model.bucket_for(n)
        plan = self.model._plan((bucket, *x.shape[1:]))
        slot = self.slot(bucket)
        if slot.done is not None:
            slot.done.synchronize()  # its previous result was collected; the buffers are free
        slot.host_in[:n] = x
        slot.device_in[:n].set(slot.host_in[:n], stream=self.copy_stream)
        copied = self.copy_stream.record()
        self.compute_stream.wait_event(copied)
        with self.compute_stream:
            plan.inputs[self.model.input_name][:n] = slot.device_in[:n]
            output = self.execute(plan)[0]
            output[:n].get(stream=self.compute_stream, out=slot.host_out[:n], blocking=False)
            slot.done = self.compute_stream.record()
        return slot, n

    @staticmethod
    def collect(slot: Slot, n: int) -> np.ndarray:
        slot.done.synchronize()
        return slot.host_out[:n].copy()
