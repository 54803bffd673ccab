"""The strong-baseline head: a backbone's global feature → BNNeck → classifier.

Source: Luo et al., "Bag of Tricks and a Strong Baseline for Deep Person Re-identification"
(CVPRW 2019), official code michuanhaohao/reid-strong-baseline: global average pooling of the
backbone's last map gives ``global_feat``; the BNNeck is a ``BatchNorm1d`` whose bias is frozen at
0 (``bias.requires_grad_(False)``), giving ``bn_feat``; the classifier is a bias-free ``Linear``
initialised N(0, 0.001). Triplet loss takes ``global_feat``, (label-smoothed) cross entropy the
classifier's logits of ``bn_feat``; test-time features are ``bn_feat`` (``neck_feat="after"``,
the paper's choice with cosine distance) or ``global_feat`` (``"before"``).

Two backbones:

* ``resnet50`` (last stride 1) → 2048-d, the paper's model;
* ``osnet_x0_25`` → its 512-d ``fc`` embedding, for fine-tuning the real MSMT17 ReID model of
  reid-mini (``reidkern.models.backbones.osnet_x0_25``). That model is loaded BN-folded (the ONNX
  export has no BatchNorm in its convolutions), so fine-tuning runs the folded convolutions; the
  embedding's own ``fc`` BatchNorm1d trains as usual (batch statistics, running statistics
  re-estimated on the new data). ``freeze_fc_bn=True`` keeps it in eval mode instead; measured on
  Con-ReID (docs/engine.md) that costs 3.4 mAP after 100 steps (82.4 against 85.8, triplet only).
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import nn

__all__ = ["BNNeckReID", "baseline_resnet50", "baseline_osnet"]


class BNNeckReID(nn.Module):
    """Backbone + BNNeck + bias-free classifier.

    Args:
        backbone: module mapping images [B, 3, H, W] to features [B, D] (``pool`` is None) or to
            a map [B, D, h, w] (``pool="avg"``).
        feat_dim: D.
        num_classes: training identities (classifier size).
        neck_feat: ``"after"`` (test features = BNNeck output) or ``"before"`` (backbone feature).
        pool: ``"avg"`` to global-average-pool a feature map, None when the backbone already
            returns a vector.

    Forward:
        training: ``(global_feat [B, D], logits [B, num_classes])``;
        eval: test features [B, D] (float, not normalised).
    """

    def __init__(self, backbone: nn.Module, feat_dim: int, num_classes: int, neck_feat: str = "after",
                 pool: Optional[str] = None):
        super().__init__()
        if neck_feat not in ("after", "before"):
            raise ValueError(f"neck_feat: expected 'after' or 'before', got {neck_feat!r}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")
        self.backbone = backbone
        self.pool = nn.AdaptiveAvgPool2d(1) if pool == "avg" else None
        self.bottleneck = nn.BatchNorm1d(feat_dim)
        self.bottleneck.bias.requires_grad_(False)  # BNNeck: no shift (official code)
        nn.init.ones_(self.bottleneck.weight)
        nn.init.zeros_(self.bottleneck.bias)
        self.classifier = nn.Linear(feat_dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)
        self.neck_feat = neck_feat

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone global feature [B, D]."""
        f = self.backbone(x)
        if isinstance(f, dict):
            f = f[next(reversed(f))]
        if self.pool is not None:
            f = torch.flatten(self.pool(f), 1)
        return f

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        global_feat = self.features(x)
        bn_feat = self.bottleneck(global_feat)
        if self.training:
            return global_feat, self.classifier(bn_feat)
        return bn_feat if self.neck_feat == "after" else global_feat


class _FrozenBN(nn.Module):
    """Wraps an OSNet so that its fc BatchNorm1d stays in eval mode while the rest trains."""

    def __init__(self, osnet: nn.Module, freeze_fc_bn: bool):
        super().__init__()
        self.net = osnet
        self.freeze_fc_bn = freeze_fc_bn

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_fc_bn:
            self.net.fc[1].eval()
        return self

    def forward(self, x):
        return self.net(x)


def baseline_resnet50(num_classes: int, weights=None, last_stride: int = 1, neck_feat: str = "after") -> BNNeckReID:
    """reid-strong-baseline's ResNet-50 BNNeck (2048-d); ``weights``: a local torchvision
    ImageNet checkpoint (None: random initialisation — fine for tests, not for accuracy)."""
    from .backbones import resnet50

    body = resnet50(last_stride=last_stride, weights=weights, out_stages=("layer4",))
    return BNNeckReID(body, 2048, num_classes, neck_feat=neck_feat, pool="avg")


def baseline_osnet(num_classes: int, weights=None, neck_feat: str = "before", freeze_fc_bn: bool = False) -> BNNeckReID:
    """OSNet x0.25 (512-d) with a BNNeck head; ``weights``: the reid-mini ONNX file (BN-folded)
    or a torchreid checkpoint. ``neck_feat="before"`` by default: the test features are the
    pretrained embedding itself, so the zero-shot model and the fine-tuned one are compared in the
    same space."""
    from .backbones import osnet_x0_25

    net = osnet_x0_25(weights)
    net.classifier = None
    return BNNeckReID(_FrozenBN(net, freeze_fc_bn), 512, num_classes, neck_feat=neck_feat)
