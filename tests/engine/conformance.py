"""The ONNX conformance set the engine claims: onnx's own backend tests (``BackendTest``) for
every operator it implements and for the real-architecture models the onnx package carries in
light form (their weights are ConstantOfShape nodes and float graph inputs, their expected outputs
ship with the package: nothing is downloaded), minus the cases excluded below with their reasons.

Run on the CPU against onnx's expected outputs by test_onnx_backend.py, and on a GPU against the
NumPy engine by ``python -m gpucheck.crosscheck``.
"""

from __future__ import annotations

import onnx.backend.test

OPERATORS = [
    "add", "averagepool", "basic_conv", "batchnorm", "clip", "concat", "constant",
    "constantofshape", "conv", "div", "dropout", "flatten", "gemm", "globalaveragepool",
    "globalmaxpool", "hardsigmoid", "hardswish", "identity", "leakyrelu", "lrn", "matmul", "max",
    "maxpool", "min", "mul", "pow", "prelu", "relu", "reshape", "sigmoid", "softmax", "squeeze",
    "sub", "sum", "tanh", "training_dropout", "transpose", "unsqueeze",
]  # fmt: skip

# the onnx package's real-model tests, run from onnx/backend/test/data/light/
MODELS = ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet",
          "squeezenet", "vgg19", "zfnet512"]  # fmt: skip

EXCLUDED = {
    # 1-D and 3-D windows: the engine's Conv and pooling are 2-D (NCHW images) only
    r"^test_(averagepool|maxpool)_(1d|3d)_": "1-D/3-D pooling",
    # training: batch statistics and random dropout masks are not inference
    r"^test_batchnorm_.*_training_mode_": "BatchNormalization in training mode",
    r"^test_training_dropout(_zero_ratio)?(_mask)?_": "Dropout in training mode",
    # the Indices output of MaxPool serves unpooling/training, not CNN inference
    r"^test_maxpool_with_argmax_": "MaxPool's Indices output",
    # a model without any run-time input has nothing to serve: load_model refuses it (the
    # ConstantOfShape tests' only input is the shape, which the backend turns into a constant)
    r"^test_constant_(cpu|cuda)$": "no graph inputs",
    r"^test_constantofshape_": "no graph inputs once the shape is a constant",
    # Pad is a different operator whose name starts with "constant"
    r"^test_constant_pad_": "Pad is not an engine operator",
    # sequence and optional types: the engine runs tensors only
    r"^test_identity_(sequence|opt)_": "sequence/optional types",
    # zero-size tensors: every planned buffer has at least one element per dimension
    r"^test_reshape_allowzero_reordered_": "a 0 dimension in the input",
    # opset 6 models: the engine reads opsets 7 and newer
    r"^test_softmax_(functional_dim3|lastdim)_": "opset 6",
    # ill-conditioned: the light SqueezeNet's logits are ~9.5e9 and equal only up to float32
    # rounding (ulp 1024), so its expected uniform softmax (0.001 each) holds only if every
    # channel rounds identically; test_models.py checks this model's logits against onnxruntime
    r"^test_squeezenet_": "softmax of logits equal to rounding",
    # function-body expansions built from operators the engine does not implement
    r"^test_clip_(?!default_(int8_)?inbounds_)(.*_)?expanded_": "Less, Where",
    r"^test_(hardsigmoid|relu)_(.*_)?expanded_ver18_": "CastLike",
    r"^test_(leakyrelu|prelu)_(.*_)?expanded_": "CastLike, Less, Where",
    r"^test_softmax_(.*_)?expanded(_ver18)?_": "Exp, ReduceMax, ReduceSum",
}


def claimed_backend_test(backend, module_name: str) -> onnx.backend.test.BackendTest:
    """onnx's conformance runner over ``backend``, restricted to the claimed cases (cpu and cuda
    variants of each)."""
    test = onnx.backend.test.BackendTest(backend, module_name)
    for op in OPERATORS:
        test.include(rf"^test_{op}(_.*)?_(cpu|cuda)$")
    for model in MODELS:
        test.include(rf"^test_{model}_(cpu|cuda)$")
    for pattern in EXCLUDED:
        test.exclude(pattern)
    return test
