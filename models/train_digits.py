"""Train the bundled digits classifier and export `digits/model.onnx` + `digits/model.json`.

    .venv/bin/pip install -e '.[train]'          # PyTorch (CPU), only needed to retrain
    .venv/bin/python models/train_digits.py      # writes models/digits/
    .venv/bin/python models/train_digits.py --out /tmp/digits   # reproduce elsewhere and compare

Deterministic: fixed seeds, deterministic kernels, one thread, the fixed split of `digits_data`.
The exported graph holds only Conv, Relu, MaxPool, Flatten and Gemm (BatchNorm is folded into the
convolutions by the exporter), with a dynamic batch axis.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from digits_data import MAX_PIXEL_VALUE, load_split
from torch import nn

TRAIN_SEED = 7
EPOCHS = 60
BATCH_SIZE = 64
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-4
# Augmentation, applied on a 32x32 upsampling (the resolution the data set was drawn at) and then
# block-averaged back to 8x8 the way the data set was made. Users' digits are often smaller in the
# frame than the data set's (an MNIST-style 28x28 keeps a 4-pixel margin), hence the zoom-out range.
MAX_ROTATION_DEG = 12.0
MAX_SHEAR = 0.15
SCALE_RANGE = (0.7, 1.1)
MAX_SHIFT_FRACTION = 0.12
OPSET = 17
DEFAULT_OUT = Path(__file__).resolve().parent / "digits"


def build_model() -> nn.Module:
    """A small conv net using only ops the engine supports; names become the ONNX node names."""

    def block(index: int, c_in: int, c_out: int) -> list[tuple[str, nn.Module]]:
        conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        return [
            (f"conv{index}", conv),
            (f"bn{index}", nn.BatchNorm2d(c_out)),
            (f"relu{index}", nn.ReLU()),
        ]

    layers = [
        *block(1, 1, 32),
        *block(2, 32, 32),
        ("pool1", nn.MaxPool2d(2)),  # 8x8 -> 4x4
        *block(3, 32, 64),
        ("pool2", nn.MaxPool2d(2)),  # 4x4 -> 2x2
        ("flatten", nn.Flatten()),
        ("dropout", nn.Dropout(0.3)),
        ("fc", nn.Linear(64 * 2 * 2, 10)),
    ]
    return nn.Sequential(OrderedDict(layers))


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random small rotation, shear, zoom and shift of a batch (N, 1, 8, 8) of values in 0..1."""
    n = x.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    angle = uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG) * (math.pi / 180.0)
    shear = uniform(-MAX_SHEAR, MAX_SHEAR)
    # affine_grid maps output coordinates to input ones, so dividing by the zoom shrinks the digit.
    inv_scale = 1.0 / uniform(*SCALE_RANGE)
    cos, sin = torch.cos(angle) * inv_scale, torch.sin(angle) * inv_scale
    theta = torch.stack(
        [
            torch.stack([cos, -sin + shear, uniform(-1, 1) * 2 * MAX_SHIFT_FRACTION], dim=1),
            torch.stack([sin, cos, uniform(-1, 1) * 2 * MAX_SHIFT_FRACTION], dim=1),
        ],
        dim=1,
    )
    # Nearest keeps the identity transform exact; bilinear would blur every sample (-4% accuracy).
    big = F.interpolate(x, scale_factor=4, mode="nearest")
    grid = F.affine_grid(theta, list(big.shape), align_corners=False)
    moved = F.grid_sample(big, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return F.avg_pool2d(moved, 4)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mean: float, std: float) -> None:
    """AdamW with a one-cycle schedule on freshly augmented batches every epoch."""
    generator = torch.Generator().manual_seed(TRAIN_SEED)
    steps_per_epoch = math.ceil(len(x) / BATCH_SIZE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=LEARNING_RATE, total_steps=EPOCHS * steps_per_epoch
    )
    model.train()
    for _ in range(EPOCHS):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), BATCH_SIZE):
            index = order[start : start + BATCH_SIZE]
            inputs = (augment(x[index], generator) - mean) / std
            loss = F.cross_entropy(model(inputs), y[index], label_smoothing=0.05)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mean: float, std: float) -> float:
    """Fraction of `x` classified as `y`, unaugmented, in eval mode."""
    model.eval()
    return (model((x - mean) / std).argmax(dim=1) == y).float().mean().item()


def model_json(mean: float, std: float) -> dict:
    """The model.json that makes the service feed images exactly as training did."""
    return {
        "name": "digits",
        "labels": [str(digit) for digit in range(10)],
        "preprocess": {
            "color_mode": "L",
            "size": [8, 8],
            "resize": "pad",
            "resample": "box",
            "background": 255,
            "invert": True,
            "mean": [mean],
            "std": [std],
        },
        "output": "logits",
    }


def export(model: nn.Module, out_dir: Path, mean: float, std: float) -> None:
    """Write model.onnx (opset 17, dynamic batch) and model.json into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of the dynamo one, which needs onnxscript
        # and emits extra ops; this one writes exactly the standard ops listed above.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 8, 8),),
            str(out_dir / "model.onnx"),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
        )
    text = json.dumps(model_json(mean, std), indent=2)
    # One line per list of numbers or labels keeps the file readable.
    text = re.sub(
        r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + re.sub(r",\s+", ", ", m[1]) + "]", text
    )
    (out_dir / "model.json").write_text(text + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output model directory")
    args = parser.parse_args()

    torch.manual_seed(TRAIN_SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # summation order, hence the exported bytes, depend on threads

    split = load_split()
    x_train = torch.from_numpy(split.train_images / MAX_PIXEL_VALUE).unsqueeze(1)
    x_held_out = torch.from_numpy(split.held_out_images / MAX_PIXEL_VALUE).unsqueeze(1)
    # Normalisation constants from the training pixels, rounded so model.json holds them exactly.
    mean = round(float(np.mean(split.train_images / MAX_PIXEL_VALUE)), 4)
    std = round(float(np.std(split.train_images / MAX_PIXEL_VALUE)), 4)

    started_s = time.perf_counter()
    model = build_model()
    train(model, x_train, torch.from_numpy(split.train_labels), mean, std)
    train_s = time.perf_counter() - started_s
    held_out = accuracy(model, x_held_out, torch.from_numpy(split.held_out_labels), mean, std)
    export(model, args.out, mean, std)
    print(f"trained in {train_s:.1f} s on {len(x_train)} images ({EPOCHS} epochs)")
    print(f"held-out accuracy: {held_out:.4f} ({len(x_held_out)} images)")
    print(f"wrote {args.out / 'model.onnx'} and {args.out / 'model.json'}")


if __name__ == "__main__":
    main()
