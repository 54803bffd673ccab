"""ONNX export of a paper model's inference path (its eval-mode forward: the test features)."""
from __future__ import annotations

import os
import warnings
from typing import Union

import torch
from torch import nn

from ._common import backend_override, check_int

__all__ = ["export_onnx"]


def export_onnx(model: nn.Module, path: Union[str, "os.PathLike[str]"], height: int, width: int,
                opset_version: int = 17, batch_size: int = 2) -> str:
    """Writes ``model``'s eval-mode forward (image → test features) as an ONNX file.

    The fused reidkern ops have no ONNX translation, so every reidkern layer runs its eager
    PyTorch path (``backend="reference"``) while exporting — the same function, exported as
    MatMul/Softmax. The batch axis is dynamic (input ``img`` [B, 3, height, width] float32, output
    ``features`` [B, D]); flip averaging, where a model has it, is left to the caller (run the
    mirrored image too). The model's mode and backends are restored afterwards.

    Uses the TorchScript-based exporter (``dynamo=False``: needs only the ``onnx`` package).
    Returns the path. Raises ValueError for non-positive sizes.
    """
    check_int(height, "height", 1)
    check_int(width, "width", 1)
    was = model.training
    param = next(model.parameters())
    x = torch.randn(check_int(batch_size, "batch_size", 1), 3, height, width, dtype=param.dtype, device=param.device)
    model.eval()
    try:
        with backend_override(model, "reference"), torch.no_grad(), warnings.catch_warnings():
            # shape checks read sizes as Python values: constants in the graph, as intended
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(model, (x,), os.fspath(path), input_names=["img"], output_names=["features"],
                              dynamic_axes={"img": {0: "batch"}, "features": {0: "batch"}},
                              opset_version=opset_version, dynamo=False)
    finally:
        model.train(was)
    return os.fspath(path)
