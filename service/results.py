"""Model outputs to the answer's ``predictions`` (top-k with labels and scores).

``rank_batch`` ranks every row of one request's outputs at once (one softmax and one argsort),
in the HTTP worker that answers it: the engine process only runs the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.modelspec import ModelSpec


@dataclass(frozen=True)
class Ranked:
    """One image's output with its classes ranked."""

    output: np.ndarray  # the model's output for this image, float32
    scores: np.ndarray  # float64: softmax of the output for logits, else the output
    order: np.ndarray  # class indices, best first (ties keep index order)


def softmax(values: np.ndarray) -> np.ndarray:
    """Numerically stable softmax in float64 over the last axis."""
    shifted = np.asarray(values, np.float64)
    shifted = shifted - shifted.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def rank_batch(outputs: np.ndarray, spec: ModelSpec) -> list[Ranked]:
    """Rank every row of an engine batch's output (N, ...): one ``Ranked`` per image."""
    outputs = np.array(outputs, np.float32)  # a copy: the caller may reuse its buffer
    flat = outputs.reshape(len(outputs), -1)
    scores = softmax(flat) if spec.output == "logits" else flat.astype(np.float64)
    order = np.argsort(-scores, axis=1, kind="stable")
    return [Ranked(outputs[i], scores[i], order[i]) for i in range(len(outputs))]


def predictions(ranked: Ranked, spec: ModelSpec, top_k: int) -> list[dict]:
    """The ``top_k`` classes of one image, best first."""
    top = ranked.order[:top_k]
    return [
        {"index": i, "label": spec.label(i), "score": score}
        for i, score in zip(top.tolist(), ranked.scores[top].tolist(), strict=True)
    ]


def result(ranked: Ranked, spec: ModelSpec, top_k: int, raw: bool) -> dict:
    """One entry of the answer's ``results`` list."""
    entry: dict = {"predictions": predictions(ranked, spec, top_k)}
    if raw:
        entry["output"] = ranked.output.reshape(-1).tolist()
    return entry
