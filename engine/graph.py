"""The engine's graph: ONNX nodes with plain-Python attributes and NumPy constants."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Node:
    op: str
    name: str
    inputs: list[str]  # "" marks an omitted optional input
    outputs: list[str]
    attrs: dict = field(default_factory=dict)


@dataclass
class ValueInfo:
    name: str
    shape: tuple  # ints, or None for a symbolic dimension
    dtype: np.dtype


@dataclass
class Graph:
    name: str
    nodes: list[Node]
    constants: dict[str, np.ndarray]
    inputs: list[ValueInfo]
    outputs: list[ValueInfo]
    opset: int

    def consumers(self) -> dict[str, list[Node]]:
        """Map each value name to the nodes that read it."""
        users: dict[str, list[Node]] = {}
        for node in self.nodes:
            for name in node.inputs:
                if name:
                    users.setdefault(name, []).append(node)
        return users

    def output_names(self) -> set[str]:
        return {value.name for value in self.outputs}
