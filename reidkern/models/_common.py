"""Pieces the paper models share: argument checks, checkpoint sniffing, backend switching."""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
from torch import nn

from reidkern.ops._validate import check_label_smoothing  # noqa: F401  (the models' one rule for ε)

from .weights import WeightsLike, as_state_dict


def check_int(value, name: str, minimum: int, what: str = "") -> int:
    """``value`` as an int >= ``minimum``; ValueError naming ``name`` otherwise (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        extra = f" ({what})" if what else ""
        raise ValueError(f"{name}: expected an int >= {minimum}{extra}, got {value!r}")
    return int(value)


def check_num_classes(num_classes) -> int:
    """Training identities: an int >= 2 (a classifier over one identity learns nothing)."""
    return check_int(num_classes, "num_classes", 2, "identities in the training split")


def check_float(value, name: str, minimum: float = 0.0, maximum: Optional[float] = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= minimum or \
            (maximum is not None and not value <= maximum):
        rng = f"[{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{name}: expected a number in {rng}, got {value!r}")
    return float(value)


def check_pids(pids, batch: int, device) -> torch.Tensor:
    """Training labels [B] int64 on ``device``; TypeError/ValueError naming ``pids``."""
    if not isinstance(pids, torch.Tensor):
        raise TypeError(f"pids: expected an int64 tensor [B], got {type(pids).__name__}")
    if pids.dtype.is_floating_point or pids.dtype == torch.bool or pids.dim() != 1 or pids.shape[0] != batch:
        raise ValueError(f"pids: expected integer labels of shape [{batch}], got {pids.dtype} {tuple(pids.shape)}")
    return pids.to(device=device, dtype=torch.int64)


@contextlib.contextmanager
def backend_override(model: nn.Module, backend: Optional[str]) -> Iterator[nn.Module]:
    """Temporarily sets ``backend`` on every submodule that has one (reidkern layers and losses):
    ``"reference"`` runs the eager PyTorch path, e.g. for ONNX export, where the fused custom ops
    have no ONNX translation."""
    saved = [(m, m.backend) for m in model.modules() if hasattr(m, "backend")]
    try:
        for m, _ in saved:
            m.backend = backend
        yield model
    finally:
        for m, b in saved:
            m.backend = b


def eval_features(model: nn.Module, x: torch.Tensor, flip: bool) -> torch.Tensor:
    """``model(x)`` in eval mode (the caller's mode is restored, even on error); with ``flip``,
    averaged with ``model`` of the horizontally mirrored image (flip test-time augmentation).
    ``x``: float [B, 3, H, W]; returns what ``model`` returns for it."""
    was = model.training
    model.eval()
    try:
        f = model(x)
        if flip:
            f = (f + model(x.flip(-1))) / 2
    finally:
        model.train(was)
    return f


def split_checkpoint(weights: WeightsLike, model_name: str, own_prefixes, foreign_hint: str) -> dict:
    """A flat state_dict from a file or mapping; ValueError naming ``weights`` when it is empty."""
    sd = as_state_dict(weights)
    if not sd:
        raise ValueError(f"weights: empty checkpoint, expected a {model_name} or {foreign_hint} state_dict")
    return sd


def not_this_model(model_name: str, sd: dict, expected: str) -> ValueError:
    keys = sorted(sd)[:6]
    return ValueError(f"weights: not a {model_name} checkpoint (expected {expected}); "
                      f"its first keys are {keys}")
