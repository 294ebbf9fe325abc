"""Regenerate the example inputs in this folder from the digits data set's held-out split.

    .venv/bin/python examples/make_examples.py            # rewrites examples/digit-*
    .venv/bin/python examples/make_examples.py --out DIR  # elsewhere, to compare

For each digit 0..9: `digit-D.png`, the first held-out image of that class rendered as a user
would send it (dark ink on white, 64x64). None of them was seen in training. The tensor files hold
what the service computes from a PNG with models/digits/model.json's preprocessing:
`digit-3.v2.json`, a KServe v2 JSON request, and `digit-5.npy`, a float32 (1, 1, 8, 8) array for
`application/x-npy`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "models"))

from digits_data import load_split, render_png, to_tensor  # noqa: E402

PNG_SCALE = 8  # 8x8 -> 64x64
V2_DIGIT = 3
NPY_DIGIT = 5
DECIMALS = 4  # enough for the JSON tensor: a pixel step is 1/255 / std = 0.0104


def first_per_class(images: np.ndarray, labels: np.ndarray) -> dict[int, np.ndarray]:
    """The first image of each class, in split order."""
    return {digit: images[np.flatnonzero(labels == digit)[0]] for digit in range(10)}


def v2_request(tensor: np.ndarray, input_name: str) -> str:
    """A KServe v2 inference request carrying `tensor` as a JSON FP32 tensor."""
    data = [round(float(value), DECIMALS) for value in tensor.ravel()]
    request = {
        "inputs": [
            {"name": input_name, "shape": list(tensor.shape), "datatype": "FP32", "data": data}
        ]
    }
    return json.dumps(request) + "\n"


def write_examples(out_dir: Path) -> None:
    """Write digit-0.png .. digit-9.png and the two tensor files into `out_dir`."""
    preprocess = json.loads((REPO / "models/digits/model.json").read_text())["preprocess"]
    split = load_split()
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs = {}
    for digit, image in first_per_class(split.held_out_images, split.held_out_labels).items():
        pngs[digit] = render_png(image, scale=PNG_SCALE)
        (out_dir / f"digit-{digit}.png").write_bytes(pngs[digit])
    v2_tensor = to_tensor(pngs[V2_DIGIT], preprocess)
    (out_dir / f"digit-{V2_DIGIT}.v2.json").write_text(v2_request(v2_tensor, "input"))
    np.save(out_dir / f"digit-{NPY_DIGIT}.npy", to_tensor(pngs[NPY_DIGIT], preprocess))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    write_examples(parser.parse_args().out)


if __name__ == "__main__":
    main()
