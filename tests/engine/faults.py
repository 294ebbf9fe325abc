"""Injected numerical faults: a real engine model with one layer computing a wrong result, as a
broken GPU kernel would (for the cross-check's tests and the fault server)."""

from __future__ import annotations


class OffByError:
    """A conv algorithm whose output channel 0 is off by ``shift`` everywhere (each image's
    result stays the same whatever the batch, so only a comparison with a reference sees it)."""

    def __init__(self, inner, shift: float):
        self.inner, self.shift = inner, shift
        self.spec, self.name = inner.spec, f"{inner.name} (wrong)"

    def __call__(self, x, out, workspace) -> None:
        self.inner(x, out, workspace)
        out[..., 0] += self.shift


def conv_names(model) -> list[str]:
    """The model's conv layers in execution order."""
    plan = model._plan((model.batch_sizes[0], *model.input_shape))
    return [step.op.ctx.node.name for step in plan.conv_steps()]


def break_conv(model, layer: str, shift: float = 0.5, buckets=None) -> None:
    """Make conv ``layer`` wrong in every planned bucket (or only in ``buckets``)."""
    found = False
    for key, plan in model.plans.items():
        if buckets is not None and key[0] not in buckets:
            continue
        for step in (s for lane in plan.lanes() for s in lane.conv_steps()):
            if step.op.ctx.node.name == layer:
                step.op.algorithm = OffByError(step.op.algorithm, shift)
                found = True
    if not found:
        raise ValueError(f"no conv layer {layer!r}; the model has {conv_names(model)}")
