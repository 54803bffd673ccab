"""reid-strong-baseline (Luo et al., CVPRW 2019): ResNet-50 (last stride 1) + BNNeck, label-smoothed
cross entropy + batch-hard triplet (margin 0.3), Adam 3.5e-4, weight decay 5e-4, 120 epochs, lr ×0.1
at epochs 40 and 70, linear warm-up over 10 epochs from 1 %, P×K = 16×4, 256×128 with flip, pad-crop
and random erasing (official code's softmax_triplet config, without the centre loss).

``model_kwargs={"weights": ".../resnet50-0676ba61.pth"}`` loads local ImageNet weights (none are
downloaded); without them the backbone starts random, which is only good for tests.
"""
from __future__ import annotations

import torch.nn.functional as F

from reidkern.distributed import ddp_loss
from reidkern.engine.recipe import Recipe, register_recipe
from reidkern.models.baseline import baseline_resnet50
from reidkern.nn.losses import TripletLoss
from reidkern.ops._validate import check_label_smoothing


class CETripletLoss:
    """``compute_loss`` of a BNNeck model: CE-LS(logits) + ``triplet_weight`` · triplet(global_feat),
    the triplet mined across processes under torchrun (``gather=True``, gradient scaled by
    ``reidkern.distributed.ddp_loss`` so that DDP's averaging gives the single-process gradient).
    ``label_smoothing`` is the recipe's (rebound by ``with_label_smoothing`` on every override)."""

    def __init__(self, label_smoothing: float = 0.1, margin: float = 0.3, metric: str = "euclidean",
                 normalize_feature: bool = False, triplet_weight: float = 1.0):
        self.label_smoothing = check_label_smoothing(label_smoothing)
        self.margin, self.metric, self.normalize_feature = margin, metric, normalize_feature
        self.triplet_weight = triplet_weight
        self.triplet = TripletLoss(margin=margin, metric=metric, normalize_feature=normalize_feature, gather=True)

    def with_label_smoothing(self, label_smoothing: float) -> "CETripletLoss":
        return CETripletLoss(label_smoothing, self.margin, self.metric, self.normalize_feature, self.triplet_weight)

    def __call__(self, model, batch):
        global_feat, logits = model(batch["img"])
        ce = F.cross_entropy(logits.float(), batch["pid"], label_smoothing=self.label_smoothing)
        tri = self.triplet(global_feat.float(), batch["pid"])
        acc = (logits.argmax(1) == batch["pid"]).float().mean()
        return ce + self.triplet_weight * ddp_loss(tri), {"ce": ce.detach(), "tri": tri.detach(), "acc": acc}


def ce_triplet_loss(label_smoothing: float = 0.1, margin: float = 0.3, metric: str = "euclidean",
                    normalize_feature: bool = False, triplet_weight: float = 1.0) -> CETripletLoss:
    """A :class:`CETripletLoss` (the strong baseline's loss)."""
    return CETripletLoss(label_smoothing, margin, metric, normalize_feature, triplet_weight)


def extract(model, batch):
    return model(batch["img"])


def _build(num_classes, **kw):
    return baseline_resnet50(num_classes, **kw)


@register_recipe("baseline")
@register_recipe("resnet50_bnneck")
def baseline() -> Recipe:
    return Recipe(name="baseline", task="image", build_model=_build, compute_loss=ce_triplet_loss(),
                  extract=extract, height=256, width=128, num_instances=4, batch_size=64,
                  optimizer="adam", lr=3.5e-4, weight_decay=5e-4, epochs=120, scheduler="step",
                  milestones=(40, 70), gamma=0.1, warmup_epochs=10, warmup_factor=0.01,
                  metric="cosine", label_smoothing=0.1, flip_test=True)
