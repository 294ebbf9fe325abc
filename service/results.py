"""Model outputs to the answer's ``predictions`` (top-k with labels and scores)."""

from __future__ import annotations

import numpy as np

from service.modelspec import ModelSpec


def softmax(values: np.ndarray) -> np.ndarray:
    """Numerically stable softmax in float64."""
    shifted = np.asarray(values, np.float64) - np.max(values)
    exp = np.exp(shifted)
    return exp / exp.sum()


def predictions(output: np.ndarray, spec: ModelSpec, top_k: int) -> list[dict]:
    """The ``top_k`` classes of one output row, best first (ties keep index order)."""
    flat = np.asarray(output).reshape(-1)
    scores = softmax(flat) if spec.output == "logits" else flat.astype(np.float64)
    order = np.argsort(-scores, kind="stable")[: min(top_k, flat.size)]
    return [
        {"index": int(i), "label": spec.label(int(i)), "score": float(scores[i])} for i in order
    ]


def result(output: np.ndarray, spec: ModelSpec, top_k: int, raw: bool) -> dict:
    """One entry of the answer's ``results`` list."""
    entry: dict = {"predictions": predictions(output, spec, top_k)}
    if raw:
        entry["output"] = np.asarray(output, np.float32).reshape(-1).tolist()
    return entry
