"""The model directory: ``model.onnx`` plus an optional ``model.json`` (name, labels, preprocess).

Every key of ``model.json`` is optional; missing values come from the ONNX input shape (channels
pick ``L`` or ``RGB``, height and width the size).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

RESAMPLE_NAMES = ("box", "bilinear", "bicubic", "lanczos", "nearest")


class Preprocess(BaseModel):
    """How an image becomes the model's float32 input."""

    model_config = ConfigDict(extra="forbid")

    color_mode: Literal["L", "RGB"] | None = None
    size: tuple[int, int] | None = None
    resize: Literal["stretch", "pad", "center-crop"] = "stretch"
    resample: Literal["box", "bilinear", "bicubic", "lanczos", "nearest"] = "bilinear"
    background: int = Field(0, ge=0, le=255)
    invert: bool = False
    mean: list[float] | None = None
    std: list[float] | None = None


class ModelJson(BaseModel):
    """The optional ``model.json`` beside ``model.onnx``. ``batch_sizes`` and
    ``max_batch_size``, when given, replace the service's for this model alone."""

    model_config = ConfigDict(extra="ignore")

    name: str | None = None
    labels: list[str] | None = None
    preprocess: Preprocess = Preprocess()
    output: Literal["logits", "probabilities"] = "logits"
    batch_sizes: list[Annotated[int, Field(ge=1, le=4096)]] | None = Field(None, min_length=1)
    max_batch_size: int | None = Field(None, ge=1, le=4096)

    @model_validator(mode="after")
    def _check_batching(self) -> ModelJson:
        if self.batch_sizes and self.max_batch_size and self.max_batch_size > max(self.batch_sizes):
            raise ValueError(
                f"max_batch_size {self.max_batch_size} exceeds the largest of {self.batch_sizes}"
            )
        return self


@dataclass(frozen=True)
class ModelSpec:
    """Everything the service needs to know about a model besides the engine itself."""

    name: str
    onnx_path: Path
    labels: tuple[str, ...] | None
    color_mode: str
    size_hw: tuple[int, int]
    resize: str
    resample: str
    background: int
    invert: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    output: str

    def label(self, index: int) -> str:
        """The class name for ``index`` (its number as text when the model has no labels)."""
        if self.labels and index < len(self.labels):
            return self.labels[index]
        return str(index)


def read_meta(meta_path: Path | None) -> ModelJson:
    """The model's ``model.json`` (all defaults when there is none)."""
    return ModelJson.model_validate(json.loads(meta_path.read_text())) if meta_path else ModelJson()


def locate(path: Path) -> tuple[Path, Path | None, str]:
    """Return (onnx file, model.json or None, default name) for a file or a model directory."""
    if path.is_dir():
        meta = path / "model.json"
        return path / "model.onnx", (meta if meta.is_file() else None), path.resolve().name
    return path, None, path.stem


def load_spec(path: Path, input_shape: tuple[int, ...]) -> ModelSpec:
    """Read ``model.json`` (if any) and fill its gaps from the model's (C, H, W) input shape."""
    onnx_path, meta_path, default_name = locate(path)
    meta = read_meta(meta_path)
    channels, height, width = (tuple(input_shape) + (1, 1, 1))[:3]
    pre = meta.preprocess
    color_mode = pre.color_mode or ("L" if channels == 1 else "RGB")
    if (1 if color_mode == "L" else 3) != channels:
        raise ValueError(f"model.json color_mode {color_mode} does not fit {channels} channels")
    mean = tuple(pre.mean) if pre.mean else (0.0,) * channels
    std = tuple(pre.std) if pre.std else (1.0,) * channels
    if len(mean) not in (1, channels) or len(std) not in (1, channels) or 0.0 in std:
        raise ValueError(f"model.json mean {mean} / std {std} do not fit {channels} channels")
    size_hw = tuple(pre.size) if pre.size else (height, width)
    if size_hw != (height, width):
        raise ValueError(f"model.json size {list(size_hw)} is not the input's {[height, width]}")
    return ModelSpec(
        name=meta.name or default_name,
        onnx_path=onnx_path,
        labels=tuple(meta.labels) if meta.labels else None,
        color_mode=color_mode,
        size_hw=size_hw,
        resize=pre.resize,
        resample=pre.resample,
        background=pre.background,
        invert=pre.invert,
        mean=mean,
        std=std,
        output=meta.output,
    )
