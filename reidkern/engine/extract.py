"""Test-time feature extraction: batched, optional AMP, flip averaging, progress bar."""
from __future__ import annotations

from typing import Callable, Dict, NamedTuple, Optional

import torch
from torch import nn

__all__ = ["Features", "extract_features"]


class Features(NamedTuple):
    """``feats`` float32 [N, D] (CPU), ``pids`` / ``camids`` / ``modality`` int64 [N] (CPU), in
    loader order; unpacks as a tuple."""

    feats: torch.Tensor
    pids: torch.Tensor
    camids: torch.Tensor
    modality: Optional[torch.Tensor] = None


def _default_extract(model: nn.Module, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
    return model(batch["img"])


@torch.no_grad()
def extract_features(model: nn.Module, loader, flip: bool = True, *, extract: Optional[Callable] = None,
                     device=None, amp=None, progress: bool = True, desc: str = "extract") -> Features:
    """Features of every batch of ``loader``, the model in eval mode.

    Args:
        model: the model (its train/eval mode is restored afterwards).
        loader: iterable of batch dicts with ``img`` float [B, 3, H, W], ``pid``, ``camid`` (and
            optionally ``modality``) [B].
        flip: average the features of each image and its left–right mirror (the usual flip
            test-time augmentation; torchreid / fast-reid sum them, which is the same direction).
        extract: ``extract(model, batch) -> [B, D]`` (a recipe's ``extract``); default
            ``model(batch["img"])``. With ``flip`` it is called a second time on the mirrored batch.
        device: where the model runs (default: the model's device).
        amp: None, ``"bf16"`` or ``"fp16"`` (autocast); features are returned in float32.
        progress: tqdm bar (images/s).

    Returns:
        :class:`Features`.

    Raises:
        ValueError: an empty loader, a batch without ``img``/``pid``/``camid``, or features that
            are not [B, D].
    """
    from tqdm.auto import tqdm

    from .trainer import amp_dtype

    fn = extract or _default_extract
    dev = torch.device(device) if device is not None else next(
        (p.device for p in model.parameters()), torch.device("cpu"))
    dt = amp_dtype(amp)
    was_training = model.training
    model.eval()
    feats, pids, camids, mods = [], [], [], []
    total = getattr(getattr(loader, "dataset", None), "__len__", lambda: None)()
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False, dynamic_ncols=True)
    try:
        for batch in loader:
            missing = [k for k in ("img", "pid", "camid") if k not in batch]
            if missing:
                raise ValueError(f"loader: batch lacks {missing} (has {sorted(batch)})")
            b = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
            with torch.autocast(dev.type, dtype=dt or torch.float32, enabled=dt is not None):
                f = fn(model, b).float()
                if flip:
                    f = (f + fn(model, {**b, "img": b["img"].flip(-1)}).float()) / 2
            if f.dim() != 2 or f.shape[0] != b["img"].shape[0]:
                raise ValueError(f"extract: expected features [B, D] with B={b['img'].shape[0]}, "
                                 f"got {list(f.shape)}")
            feats.append(f.cpu())
            pids.append(torch.as_tensor(batch["pid"]).long().cpu())
            camids.append(torch.as_tensor(batch["camid"]).long().cpu())
            if "modality" in batch:
                mods.append(torch.as_tensor(batch["modality"]).long().cpu())
            bar.update(len(f))
    finally:
        bar.close()
        model.train(was_training)
    if not feats:
        raise ValueError("loader: yielded no batch (empty split?)")
    return Features(torch.cat(feats), torch.cat(pids), torch.cat(camids),
                    torch.cat(mods) if mods else None)
