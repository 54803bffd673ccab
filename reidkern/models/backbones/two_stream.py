"""Two-stream ResNet-50 for visible-infrared ReID (CAL's backbone).

Source: the AGW baseline of Ye et al., "Deep Learning for Person Re-identification: A Survey
and Outlook" (TPAMI 2021): a ResNet-50 whose first part is modality-specific (one copy for
visible images, one for infrared) and whose remaining stages are shared. AGW's official code
keeps only the stem specific; the common variant keeps the stem and layer1 specific, which is
the default here (``split_after="layer1"``, a constructor argument because CAL's split is
unverified).

Parameter names: ``visible.<torchvision name>``, ``infrared.<torchvision name>`` for the
specific stages and ``shared.<torchvision name>`` for the rest, e.g. ``visible.conv1.weight``,
``infrared.layer1.0.bn1.running_mean``, ``shared.layer4.2.conv3.weight``. A plain torchvision
``resnet50`` checkpoint loads into both streams (each specific stage gets a copy).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Sequence, Union

import torch
from torch import nn

from ..weights import LoadResult, WeightsLike, as_state_dict, load_weights
from .resnet import STAGES, ResNetTrunk, _check_image, _check_stages

__all__ = ["TwoStreamResNet50", "two_stream_resnet50", "VISIBLE", "INFRARED"]

VISIBLE = 0
INFRARED = 1
_STREAMS = ("visible", "infrared")
_PREFIXES = ("visible.", "infrared.", "shared.")


class TwoStreamResNet50(nn.Module):
    """ResNet-50 with modality-specific early stages and shared later stages.

    Args:
        last_stride: stride of layer4 (1 = ReID default).
        out_stages: stage names returned by ``forward`` (from ``"stem"``, ``"layer1"``..``"layer4"``).
        split_after: last modality-specific stage: ``"stem"`` (AGW official), ``"layer1"``
            (default), ``"layer2"`` or ``"layer3"``.

    Forward:
        x: float [B, 3, H, W].
        modality: ``"visible"``, ``"infrared"``, or an integer/bool tensor [B] with
            0 = visible, 1 = infrared (mixed batches are split, run through their stream, and
            put back in the original order).
        returns: ``OrderedDict`` stage → [B, C, h, w] (same shapes as ``ResNet50``).

    Raises:
        TypeError / ValueError: bad ``x`` or ``modality`` (wrong type, length or values).
    """

    def __init__(self, last_stride: int = 1, out_stages: Sequence[str] = ("layer4",), split_after: str = "layer1"):
        super().__init__()
        if split_after not in STAGES[:-1]:
            raise ValueError(f"split_after: expected one of {STAGES[:-1]}, got {split_after!r}")
        k = STAGES.index(split_after) + 1
        self.specific_stages = STAGES[:k]
        self.shared_stages = STAGES[k:]
        self.out_stages = _check_stages(out_stages, STAGES)
        self.visible = ResNetTrunk(self.specific_stages, last_stride)
        self.infrared = ResNetTrunk(self.specific_stages, last_stride)
        self.shared = ResNetTrunk(self.shared_stages, last_stride)

    def _modality_index(self, modality, batch: int) -> Union[int, torch.Tensor]:
        if isinstance(modality, str):
            if modality not in _STREAMS:
                raise ValueError(f"modality: expected 'visible', 'infrared' or a tensor [B], got {modality!r}")
            return _STREAMS.index(modality)
        if not isinstance(modality, torch.Tensor):
            raise TypeError(f"modality: expected str or torch.Tensor, got {type(modality).__name__}")
        if modality.dtype.is_floating_point or modality.dim() != 1 or modality.shape[0] != batch:
            raise ValueError(
                f"modality: expected an integer or bool tensor of shape [{batch}], "
                f"got {modality.dtype} {list(modality.shape)}"
            )
        m = modality.to(torch.long)
        if bool(((m != VISIBLE) & (m != INFRARED)).any()):
            raise ValueError("modality: values must be 0 (visible) or 1 (infrared)")
        return m

    def forward(self, x: torch.Tensor, modality) -> "OrderedDict[str, torch.Tensor]":
        _check_image(x)
        m = self._modality_index(modality, x.shape[0])
        spec_out = [s for s in self.specific_stages if s in self.out_stages] + [self.specific_stages[-1]]
        if isinstance(m, int):
            spec = (self.visible, self.infrared)[m](x, spec_out)
        else:
            parts = []
            for code, stream in enumerate((self.visible, self.infrared)):
                idx = torch.nonzero(m == code).flatten()
                if idx.numel():
                    parts.append((idx, stream(x.index_select(0, idx.to(x.device)), spec_out)))
            spec = OrderedDict()
            for s in dict.fromkeys(spec_out):
                first = parts[0][1][s]
                merged = first.new_empty((x.shape[0],) + tuple(first.shape[1:]))
                for idx, feats in parts:
                    merged = merged.index_copy(0, idx.to(x.device), feats[s])
                spec[s] = merged
        shared_out = [s for s in self.shared_stages if s in self.out_stages]
        shared = self.shared(spec[self.specific_stages[-1]], shared_out) if shared_out else {}
        return OrderedDict((s, spec[s] if s in spec else shared[s]) for s in self.out_stages)

    def expand_torchvision(self, state_dict: dict) -> dict:
        """Map a plain torchvision ResNet-50 state_dict to this layout: each specific stage's
        keys are copied to ``visible.`` and ``infrared.``, the rest go to ``shared.``; ``fc.*``
        is dropped. A state_dict already in this layout is returned unchanged."""
        if any(k.startswith(_PREFIXES) for k in state_dict):
            return dict(state_dict)
        out = {}
        for k, v in state_dict.items():
            head = k.split(".", 1)[0]
            stage = "stem" if head in ("conv1", "bn1") else head
            if stage in self.specific_stages:
                out["visible." + k] = v
                out["infrared." + k] = v.clone()
            elif stage in self.shared_stages:
                out["shared." + k] = v
            else:
                out[k] = v  # fc.* and anything unknown: left for the checks to report/ignore
        return out

    def load_weights(self, weights: WeightsLike, strict: bool = True) -> LoadResult:
        """Load a torchvision ResNet-50 checkpoint (into both streams) or a state_dict of this
        class. Errors as ``reidkern.models.weights.load_weights``."""
        sd = self.expand_torchvision(as_state_dict(weights))
        return load_weights(self, sd, strict=strict, ignore_prefixes=("fc.",))


def two_stream_resnet50(
    last_stride: int = 1,
    weights: Optional[WeightsLike] = None,
    out_stages: Sequence[str] = ("layer4",),
    split_after: str = "layer1",
    strict: bool = True,
) -> TwoStreamResNet50:
    """Build a two-stream ResNet-50 (see ``TwoStreamResNet50``), optionally loading local
    weights: a torchvision ``resnet50`` checkpoint (copied into both streams) or a state_dict
    saved from this class. Raises FileNotFoundError / ValueError like ``resnet50``."""
    model = TwoStreamResNet50(last_stride=last_stride, out_stages=out_stages, split_after=split_after)
    if weights is not None:
        model.load_weights(weights, strict=strict)
    return model
