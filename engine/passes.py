"""Load-time graph rewrites: support check, identity removal, constant folding, BatchNorm folding
into the preceding Conv, activation fusion into the Conv (or residual Add) epilogue, and a
following max-pool fused into the Conv's output stage."""

from __future__ import annotations

import numpy as np

from engine.conv import Epilogue
from engine.errors import UnsupportedModelError
from engine.graph import Graph, Node
from engine.ops import REGISTRY
from engine.ops.base import EPILOGUE_ATTR, PLAIN, POOL_ATTR, OpContext
from engine.ops.elementwise import ACTIVATION_ATTRS, activation_params, bn_scale_shift


def check_supported(graph: Graph) -> None:
    """Raise UnsupportedModelError naming every unsupported op or attribute at once."""
    problems = []
    for node in graph.nodes:
        if node.op not in REGISTRY:
            problems.append(f"{node.name}: operator {node.op} is not supported")
        else:
            problems.extend(REGISTRY[node.op].check(node, graph.opset))
    if problems:
        raise UnsupportedModelError(problems)


def _rename_uses(graph: Graph, old: str, new: str) -> None:
    for node in graph.nodes:
        node.inputs = [new if name == old else name for name in node.inputs]


def remove_identities(graph: Graph) -> None:
    """Identity and inference Dropout forward their input (unless they produce a graph output)."""
    outputs = graph.output_names()
    for node in list(graph.nodes):
        if (
            node.op in ("Identity", "Dropout")
            and not any(node.outputs[1:])
            and (node.outputs[0] not in outputs)
        ):
            graph.nodes.remove(node)
            _rename_uses(graph, node.outputs[0], node.inputs[0])


def fold_constants(graph: Graph, backend, tuner) -> None:
    """Evaluate, once, every node whose inputs are all constants (shape arithmetic, weights)."""
    for node in list(graph.nodes):
        names = [name for name in node.inputs if name]
        if not names or not all(name in graph.constants for name in names):
            continue
        if REGISTRY[node.op].layout != PLAIN and node.op != "Identity":
            values = [graph.constants[name] for name in names]
            if any(v.ndim == 4 for v in values):
                continue  # NHWC-only ops are not worth folding
        consts = [graph.constants.get(name) if name else None for name in node.inputs]
        ctx = OpContext(node, graph.opset, backend,
                        [tuple(c.shape) if c is not None else () for c in consts],
                        [c.dtype if c is not None else np.dtype(np.float32) for c in consts],
                        [PLAIN] * len(consts), consts, tuner)  # fmt: skip
        op = REGISTRY[node.op](ctx)
        outs = (
            [np.empty(s, d) for s, d in zip(op.out_shapes, op.out_dtypes)] if op.allocates else None
        )
        results = op.run([c if c is None else np.asarray(c) for c in consts], outs)
        for name, value in zip(node.outputs, results):
            graph.constants[name] = np.array(value)
        graph.nodes.remove(node)


def _single_consumer(graph: Graph, value: str) -> Node | None:
    if value in graph.output_names():
        return None
    users = graph.consumers().get(value, [])
    return users[0] if len(users) == 1 else None


def fold_batchnorm(graph: Graph) -> None:
    """Conv -> BatchNormalization becomes one Conv with rescaled weights and bias."""
    for conv in [n for n in graph.nodes if n.op == "Conv"]:
        bn = _single_consumer(graph, conv.outputs[0])
        if bn is None or bn.op != "BatchNormalization" or any(bn.outputs[1:]):
            continue
        params = [graph.constants.get(name) for name in bn.inputs[1:5]]
        weight = graph.constants.get(conv.inputs[1])
        if any(p is None for p in params) or weight is None:
            continue
        scale, shift = bn_scale_shift(*params, float(bn.attrs.get("epsilon", 1e-5)))
        bias = graph.constants.get(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2] else 0
        if bias is None:  # a bias computed at run time: nothing to fold into (Conv refuses it)
            continue
        new_w = (weight.astype(np.float64) * scale.reshape(-1, 1, 1, 1)).astype(np.float32)
        new_b = (np.asarray(bias, np.float64) * scale + shift).astype(np.float32)
        graph.constants[conv.name + "/folded_weight"] = new_w
        graph.constants[conv.name + "/folded_bias"] = new_b
        conv.inputs = [conv.inputs[0], conv.name + "/folded_weight", conv.name + "/folded_bias"]
        conv.outputs = [bn.outputs[0]]
        graph.nodes.remove(bn)


def fuse_activations(graph: Graph) -> None:
    """Conv -> activation becomes one Conv whose epilogue applies the activation in place; a
    two-input Add -> Relu or LeakyRelu (a residual block's end) one Add with that epilogue."""
    for node in [n for n in graph.nodes if n.op in ("Conv", "Add")]:
        act = _single_consumer(graph, node.outputs[0])
        if act is None or act.op not in ACTIVATION_ATTRS or EPILOGUE_ATTR in node.attrs:
            continue
        if node.op == "Add" and (act.op not in ("Relu", "LeakyRelu") or len(node.inputs) != 2):
            continue
        params = activation_params(act, graph.constants)
        if params is None:
            continue
        node.attrs[EPILOGUE_ATTR] = Epilogue(*params)
        node.outputs = [act.outputs[0]]
        graph.nodes.remove(act)


def _pool_window(node: Node) -> int | None:
    """p when ``node`` is a p x p MaxPool at stride p, without padding, dilation, ceil mode or
    indices (the pool a conv's output stage can take over), else None."""
    kernel = list(node.attrs.get("kernel_shape") or ())
    if len(kernel) != 2 or kernel[0] != kernel[1] or kernel[0] < 2:
        return None
    plain = (
        list(node.attrs.get("strides") or ()) == kernel
        and not any(node.attrs.get("pads") or ())
        and node.attrs.get("auto_pad", "NOTSET") in ("NOTSET", "VALID")
        and list(node.attrs.get("dilations") or (1, 1)) == [1, 1]
        and not node.attrs.get("ceil_mode", 0)
        and not any(node.outputs[1:])
    )
    return int(kernel[0]) if plain else None


def fuse_pools(graph: Graph) -> None:
    """Conv -> MaxPool (window = stride, no padding) becomes one Conv that pools its activated
    output (``POOL_ATTR``; engine/ops/conv.py)."""
    for conv in [n for n in graph.nodes if n.op == "Conv"]:
        pool = _single_consumer(graph, conv.outputs[0])
        if pool is None or pool.op != "MaxPool" or POOL_ATTR in conv.attrs:
            continue
        window = _pool_window(pool)
        if window is None:
            continue
        conv.attrs[POOL_ATTR] = window
        conv.outputs = [pool.outputs[0]]
        graph.nodes.remove(pool)


def optimize(graph: Graph, backend, tuner) -> Graph:
    """Every load-time pass, in order."""
    check_supported(graph)
    remove_identities(graph)
    fold_constants(graph, backend, tuner)
    fold_batchnorm(graph)
    fuse_activations(graph)
    fuse_pools(graph)
    return graph
