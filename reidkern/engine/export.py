"""ONNX export of a model's inference path (the recipe's ``extract``), checked with onnxruntime."""
from __future__ import annotations

import os
from typing import Dict

import numpy as np
import torch
from torch import nn

__all__ = ["InferencePath", "export_onnx"]


class InferencePath(nn.Module):
    """``images [B, 3, H, W] → recipe.extract(model, {"img": images})`` as a plain module."""

    def __init__(self, model: nn.Module, extract):
        super().__init__()
        self.model, self.extract = model, extract

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.extract(self.model, {"img": images})


def export_onnx(model: nn.Module, recipe, path: str, *, batch: int = 2, opset: int = 17,
                check: bool = True, seed: int = 0) -> Dict[str, float]:
    """Write ``recipe.extract``'s inference path of ``model`` (eval mode) as ONNX to ``path``
    (input ``images`` float32 [B, 3, H, W] with a dynamic batch, output ``features`` [B, D]),
    atomically; with ``check``, run onnxruntime on random images and compare to PyTorch.

    Returns:
        ``{"max_abs_diff": ..., "max_abs": ...}`` of the check (empty without ``check``).

    Raises:
        ImportError: onnx/onnxruntime missing (``pip install 'reidkern[onnx]'``).
        AssertionError: onnxruntime differs from PyTorch by more than 1e-4 of the features' scale
            (the file is then not written).
    """
    from reidkern.atomic import atomic_path

    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("reidkern export needs onnx and onnxruntime: pip install 'reidkern[onnx]'") from exc
    model = model.eval().cpu()
    net = InferencePath(model, recipe.extract).eval()
    x = torch.randn(batch, 3, recipe.height, recipe.width, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = net(x).float().numpy()
    from reidkern.models._common import backend_override

    with atomic_path(path) as tmp:
        import warnings
        # the fused reidkern ops have no ONNX form: their layers export their eager PyTorch path
        # (the same function; the check below compares it with the model as it runs)
        with backend_override(model, "reference"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (x,), str(tmp), input_names=["images"], output_names=["features"],
                              dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
                              opset_version=opset, dynamo=False)
        if not check:
            return {}
        sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"images": x.numpy()})[0]
        diff = float(np.abs(got - ref).max())
        scale = float(np.abs(ref).max())
        if not diff <= 1e-4 * max(scale, 1.0):
            raise AssertionError(f"onnxruntime differs from PyTorch by {diff:.3g} (features up to {scale:.3g})")
    return {"max_abs_diff": diff, "max_abs": scale}


def onnx_extract_fn(model: nn.Module, recipe, threads: int = None):
    """An ``extract(model, batch)`` that runs ``recipe.extract``'s inference path with onnxruntime
    (CPU): the path is exported to a temporary ONNX file and checked against PyTorch first
    (:func:`export_onnx`). The returned function ignores its ``model`` argument."""
    import tempfile

    import onnxruntime as ort

    was_training = model.training
    with tempfile.TemporaryDirectory() as tmpdir:
        path = os.path.join(tmpdir, "model.onnx")
        export_onnx(model, recipe, path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    model.train(was_training)

    def extract(_model, batch):
        img = batch["img"].float().contiguous().cpu().numpy()
        return torch.from_numpy(sess.run(None, {"images": img})[0])

    return extract
