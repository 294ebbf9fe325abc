"""The bundled digits model as files: graph, model.json, held-out accuracy with onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.models.conftest import DIGITS_DIR, MIN_ACCURACY, digits_data

# What the engine supports and the training script is meant to emit.
ALLOWED_OPS = {
    "Conv",
    "BatchNormalization",
    "Relu",
    "MaxPool",
    "GlobalAveragePool",
    "Flatten",
    "Gemm",
}


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    return ort.InferenceSession(str(DIGITS_DIR / "model.onnx"), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def held_out_inputs(held_out_pngs, model_json) -> np.ndarray:
    """The held-out PNGs preprocessed as model.json says, stacked into (N, 1, 8, 8)."""
    return np.concatenate(
        [digits_data.to_tensor(png, model_json["preprocess"]) for png in held_out_pngs]
    )


def test_graph_is_standard_ops_with_dynamic_batch():
    model = onnx.load(str(DIGITS_DIR / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert {node.op_type for node in model.graph.node} <= ALLOWED_OPS
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    (graph_input,) = model.graph.input
    (graph_output,) = model.graph.output
    assert graph_input.name == "input" and graph_output.name == "logits"
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 8, 8]
    assert graph_output.type.tensor_type.shape.dim[1].dim_value == 10


def test_model_json_matches_the_training_normalisation(model_json, split):
    # Training fed v / 16 normalised by the training pixels' mean and std, rounded to 4 places.
    pixels = split.train_images / digits_data.MAX_PIXEL_VALUE
    pre = model_json["preprocess"]
    assert pre["mean"] == [round(float(np.mean(pixels)), 4)]
    assert pre["std"] == [round(float(np.std(pixels)), 4)]
    assert model_json["labels"] == [str(d) for d in range(10)]
    assert (pre["color_mode"], pre["size"], pre["invert"]) == ("L", [8, 8], True)


def test_png_rendering_round_trips_to_the_training_input(split, held_out_pngs, model_json):
    """A rendered PNG, preprocessed as model.json says, is the sample training would have seen."""
    pre = model_json["preprocess"]
    for image, png in list(zip(split.held_out_images, held_out_pngs, strict=True))[:50]:
        expected = (image / digits_data.MAX_PIXEL_VALUE - pre["mean"][0]) / pre["std"][0]
        got = digits_data.to_tensor(png, pre)[0, 0]
        np.testing.assert_allclose(got, expected, atol=0.6 / 255 / pre["std"][0])


def test_held_out_accuracy_with_onnxruntime(session, held_out_inputs, split):
    predicted = session.run(None, {"input": held_out_inputs})[0].argmax(axis=1)
    accuracy = float(np.mean(predicted == split.held_out_labels))
    print(f"held-out accuracy (onnxruntime, {len(predicted)} PNGs): {accuracy:.4f}")
    assert accuracy >= MIN_ACCURACY


def test_engine_matches_onnxruntime_on_the_bundled_model(session, held_out_inputs):
    engine = pytest.importorskip("engine")
    model = engine.load_model(str(DIGITS_DIR / "model.onnx"), device="cpu", batch_sizes=(1, 8, 32))
    rng = np.random.default_rng()
    noise = rng.standard_normal((5, 1, 8, 8)).astype(np.float32)
    for x in (held_out_inputs[rng.choice(len(held_out_inputs), 32, replace=False)], noise):
        expected = session.run(None, {"input": x})[0]
        np.testing.assert_allclose(model(x), expected, rtol=1e-4, atol=1e-4)
