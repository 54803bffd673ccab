"""AM-Softmax / CosFace (Wang et al. 2018, "Additive Margin Softmax for Face Verification"; Wang
et al. 2018, "CosFace: Large Margin Cosine Loss"): the LA-Transformer note's classification loss."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from reidkern.ops import _validate as V


def cosface_logits(features, weight, labels=None, margin=0.35, scale=30.0):
    """AM-Softmax / CosFace logits ``scale · (cos θ_{i,c} − margin · [c = labels_i])``.

    cos θ = norm(features) @ norm(weight)ᵀ (rows L2-normalised, eps 1e-12).

    Args:
        features: [B, in_features] float. weight: [num_classes, in_features] float.
        labels: [B] int class indices in [0, num_classes), or None (no margin: inference logits).
        margin: additive cosine margin m (default 0.35). scale: s (default 30).

    Returns: [B, num_classes] logits (features' dtype).

    Raises: ValueError on shape mismatch, labels out of range, NaN/inf features or weight;
    TypeError on non-integer labels. Any finite magnitude is accepted (huge rows are normalised
    after an exact power-of-two scaling).
    """
    V.check_ndim(features, 2, "features", "[B, in_features]")
    V.check_ndim(weight, 2, "weight", "[num_classes, in_features]")
    if features.shape[1] != weight.shape[1]:
        raise ValueError(f"features has {features.shape[1]} features, weight expects {weight.shape[1]}")
    if not torch.compiler.is_compiling():
        V.check_finite(features, "features")
        V.check_finite(weight, "weight")
    cos = V.normalize_rows(features, dim=1) @ V.normalize_rows(weight, dim=1).t()
    if labels is None:
        return scale * cos
    labels = V.check_ids(labels, features.shape[0], "labels", "B (rows of features)", features.device)
    if not torch.compiler.is_compiling() and labels.numel():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= weight.shape[0]:
            raise ValueError(f"labels must lie in [0, {weight.shape[0]}), got values in [{lo}, {hi}]")
    onehot = F.one_hot(labels, weight.shape[0]).to(cos.dtype)
    return scale * (cos - margin * onehot)


class AMSoftmaxLoss(nn.Module):
    """Cross-entropy over AM-Softmax / CosFace logits, with its class-weight parameter.

    Args:
        in_features: feature size. num_classes: identities.
        margin: m (default 0.35). scale: s (default 30). label_smoothing: passed to cross-entropy.

    Attributes: ``weight`` [num_classes, in_features] (normal init, std 0.01).

    Shapes: ``forward(features [B, in_features], labels [B] int) -> scalar``;
    ``logits(features, labels=None) -> [B, num_classes]``.
    """

    def __init__(self, in_features, num_classes, margin=0.35, scale=30.0, label_smoothing=0.0):
        super().__init__()
        if in_features < 1 or num_classes < 1:
            raise ValueError("in_features and num_classes must be >= 1")
        self.in_features, self.num_classes = int(in_features), int(num_classes)
        self.margin, self.scale = float(margin), float(scale)
        self.label_smoothing = V.check_label_smoothing(label_smoothing)
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.normal_(self.weight, std=0.01)

    def extra_repr(self):
        return (f"in_features={self.in_features}, num_classes={self.num_classes}, "
                f"margin={self.margin}, scale={self.scale}")

    def logits(self, features, labels=None):
        return cosface_logits(features, self.weight, labels, self.margin, self.scale)

    def forward(self, features, labels):
        logits = self.logits(features, labels)
        if logits.shape[0] == 0:  # empty batch: zero loss (cross-entropy's mean over none is NaN)
            return 0 * logits.sum()
        return F.cross_entropy(logits, labels.to(logits.device).long(),
                               label_smoothing=self.label_smoothing)
