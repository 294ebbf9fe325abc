"""Ranking a batch of outputs on the engine thread: softmax, stable order, top-k, raw rows."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from service.modelspec import ModelSpec
from service.results import rank_batch, result

SPEC = ModelSpec(
    name="m", onnx_path=Path("m.onnx"), labels=("a", "b", "c"), color_mode="RGB",
    size_hw=(8, 8), resize="stretch", resample="bilinear", background=0, invert=False,
    mean=(0.0,), std=(1.0,), output="logits",
)  # fmt: skip


def reference(row: np.ndarray, output: str) -> list[tuple[int, float]]:
    """Per row in float64 with plain Python: softmax, then sort by score, ties by index."""
    values = [float(v) for v in row.reshape(-1)]
    if output == "logits":
        top = max(values)
        exps = [math.exp(v - top) for v in values]
        values = [e / sum(exps) for e in exps]
    return sorted(enumerate(values), key=lambda pair: (-pair[1], pair[0]))


@pytest.mark.parametrize("output", ["logits", "probabilities"])
@pytest.mark.parametrize("shape", [(5, 7), (3, 4, 1, 1), (1, 1000)])
def test_rank_batch_matches_a_per_row_reference(output, shape):
    rng = np.random.default_rng(sum(shape))
    y = rng.standard_normal(shape).astype(np.float32)
    y.reshape(len(y), -1)[:, 1] = y.reshape(len(y), -1)[:, 0]  # a tie in every row
    spec = dataclasses.replace(SPEC, output=output)
    ranked = rank_batch(y, spec)
    assert len(ranked) == len(y)
    for row, r in zip(y, ranked, strict=True):
        expected = reference(row, output)
        assert r.order.tolist() == [i for i, _ in expected]
        np.testing.assert_allclose(r.scores[r.order], [s for _, s in expected], rtol=1e-12)
        np.testing.assert_array_equal(r.output, row)


def test_results_are_independent_of_the_engine_buffer():
    y = np.random.default_rng(3).standard_normal((2, 3)).astype(np.float32)
    ranked = rank_batch(y, SPEC)
    expected = result(ranked[1], SPEC, top_k=2, raw=True)
    y[:] = 0  # the engine reuses its output buffer on the next call
    assert result(ranked[1], SPEC, top_k=2, raw=True) == expected


def test_result_top_k_labels_and_raw_output():
    y = np.array([[0.5, 2.0, -1.0]], np.float32)
    entry = result(rank_batch(y, SPEC)[0], SPEC, top_k=5, raw=True)
    assert [p["label"] for p in entry["predictions"]] == ["b", "a", "c"]  # k capped at 3
    assert all(isinstance(p["index"], int) and isinstance(p["score"], float)
               for p in entry["predictions"])  # fmt: skip
    assert entry["output"] == [0.5, 2.0, -1.0]
    assert "output" not in result(rank_batch(y, SPEC)[0], SPEC, top_k=1, raw=False)
