"""Read an OSNet ONNX export's initializers as a torchreid-named, BN-folded state_dict.

Only the initializers (the weights) are read, with the optional ``onnx`` package; the graph
is used to name them and is not executed. A torch.onnx export names its nodes by module
scope, e.g. ``/conv2/conv2.0/conv2b/conv2b.1/conv2/Conv``; a scope that extends its parent's
name with ``.<index>`` is a child of an ``nn.Sequential``. Weights of folded Conv+BN pairs get
anonymous initializer names (``onnx::Conv_1047``), so their state_dict names are rebuilt from
the scope of the Conv node that uses them: ``conv2.0.conv2b.1.conv2.weight`` / ``.bias``.
Initializers that kept their names (``conv2.0.conv2a.conv1.weight``, ``fc.1.running_var``, ...)
are used as they are.
"""
from __future__ import annotations

import os
from typing import Dict

import numpy as np
import torch

__all__ = ["read_onnx_state_dict", "scope_to_module_name"]

_WEIGHT_OPS = ("Conv", "Gemm", "BatchNormalization", "MatMul")


def scope_to_module_name(node_name: str) -> str:
    """``"/conv2/conv2.0/conv1/conv/Conv"`` → ``"conv2.0.conv1.conv"``.

    Each scope component is either an attribute name or, for children of an
    ``nn.Sequential``, the parent's component followed by ``.<index>``.
    """
    parts = [p for p in node_name.split("/") if p][:-1]  # drop the op name ("Conv", "Gemm")
    path = []
    prev = None
    for comp in parts:
        if prev is not None and comp.startswith(prev + ".") and comp[len(prev) + 1:].replace(".", "").isdigit():
            path.append(comp[len(prev) + 1:])
        else:
            path.append(comp)
        prev = comp
    return ".".join(path)


def read_onnx_state_dict(path) -> Dict[str, torch.Tensor]:
    """Map the initializers of an OSNet ONNX file to a folded-OSNet state_dict.

    Args:
        path: local ``.onnx`` file.

    Returns:
        dict name → float32 tensor, names as in ``OSNet(folded=True).state_dict()``.

    Raises:
        FileNotFoundError: missing file. ImportError: ``onnx`` not installed.
        ValueError: the file is not a readable ONNX model, or an anonymous initializer is
        used by a node that does not carry a module scope.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path!r} (reidkern never downloads weights)")
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"reading {path!r} needs the optional 'onnx' package: pip install onnx") from e
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:
        raise ValueError(f"{path!r} could not be read as an ONNX model: {e}") from e
    graph = model.graph
    arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    if not arrays:
        raise ValueError(f"{path!r}: the ONNX graph has no initializers (no weights)")
    sd: Dict[str, torch.Tensor] = {}
    # Weights are the initializers that layers consume; others (Reshape's shape constants)
    # are not parameters.
    used = {n for node in graph.node if node.op_type in _WEIGHT_OPS for n in node.input[1:]}
    for name, arr in arrays.items():
        if name in used and not name.startswith("onnx::"):
            sd[name] = torch.from_numpy(np.array(arr, dtype=np.float32))
    for node in graph.node:
        anon = [(i, n) for i, n in enumerate(node.input) if n in arrays and n.startswith("onnx::")]
        if not anon:
            continue
        if node.op_type != "Conv":
            raise ValueError(f"{path!r}: unnamed weight used by a {node.op_type} node {node.name!r}; expected Conv only")
        module = scope_to_module_name(node.name)
        for i, n in anon:
            role = {1: "weight", 2: "bias"}.get(i)
            if role is None or not module:
                raise ValueError(f"{path!r}: cannot name initializer {n!r} of node {node.name!r}")
            key = f"{module}.{role}"
            if key in sd:
                raise ValueError(f"{path!r}: two initializers map to {key!r}")
            sd[key] = torch.from_numpy(np.array(arrays[n], dtype=np.float32))
    return sd
