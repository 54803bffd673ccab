"""Fine-tuning the real OSNet x0.25 ReID model (MSMT17 weights of ../shared/data/reid-mini) on a
new dataset: the strong baseline's head and losses (BNNeck, label-smoothed CE + batch-hard triplet,
warm-up) on a pretrained embedding.

What differs from training from scratch, and why (each choice measured on Con-ReID, table in
docs/engine.md):

* the backbone is the BN-folded ONNX export (no BatchNorm in its convolutions); Adam at 1e-4 for it,
  10× for the new BNNeck + classifier, no weight decay, a short linear warm-up (first 5 % of the
  run from 0.1×) then cosine to 0, stretched to ``--steps``/``--epochs``;
* the embedding's fc BatchNorm1d trains (batch statistics, running statistics re-estimated on the
  new data): keeping MSMT17's statistics frozen cost 3.4 mAP;
* test features are the 512-d embedding before the BNNeck (``neck_feat="before"``), the space the
  zero-shot model is evaluated in — the before/after comparison is like for like;
* augmentation is the horizontal flip only (the setting measured; the crops are already aligned
  detections — pad-crop and random erasing were not measured in these short runs);
* k-reciprocal re-ranking's (k1, k2, λ) are chosen on the validation split from ``RERANK_GRID``
  (the test set is never used to choose): Con-ReID has ~90 gallery images per identity, where
  Market-1501's k1 = 20 reaches only a fraction of an identity's true neighbours;
* the stem and the first two stages (``conv1``..``conv3``, the high-resolution layers) stay frozen
  (a :class:`~reidkern.engine.hooks.FreezeSchedule` hook): on CPU the backward pass through them is
  most of a step's time, and the MSMT17 low-level filters transfer as they are. ``osnet_full``
  (the same recipe, every layer training; ``get_recipe("osnet", hooks=[])`` is the same thing) is
  ~2x slower per step and scores higher re-ranked: on Con-ReID, 4 epochs, re-ranked test mAP
  90.0 / 90.2 (seeds 0 / 1) against 89.7 with the stages frozen (benchmarks/results/cpu-epyc-2core/).

``model_kwargs["weights"]`` defaults to reid-mini's ``osnet_x0_25_msmt17.onnx`` (found through
``reidkern.data.reid_mini_dir``; ``$REIDKERN_DATA`` points elsewhere).
"""
from __future__ import annotations

import dataclasses
import os
from functools import partial

from reidkern.data import build_transforms
from reidkern.engine.hooks import FreezeSchedule
from reidkern.engine.recipe import Recipe, register_recipe
from reidkern.engine.recipes.baseline import ce_triplet_loss, extract
from reidkern.models.baseline import baseline_osnet

ONNX_NAME = "osnet_x0_25_msmt17.onnx"


def default_weights():
    """Path of reid-mini's OSNet ONNX file; FileNotFoundError when the folder is absent."""
    from reidkern.data.paths import reid_mini_dir

    folder = reid_mini_dir()
    path = os.path.join(folder, ONNX_NAME) if folder else None
    if path is None or not os.path.isfile(path):
        raise FileNotFoundError(f"osnet: the pretrained weights {ONNX_NAME} were not found (looked in "
                                f"{folder or '../shared/data/reid-mini'}); set REIDKERN_DATA to the reid-mini folder")
    return path


def _build(num_classes, weights=None, **kw):
    return baseline_osnet(num_classes, weights=weights or default_weights(), **kw)


def _groups(model, lr):
    head = [p for n, p in model.named_parameters() if not n.startswith("backbone.") and p.requires_grad]
    body = [p for n, p in model.named_parameters() if n.startswith("backbone.") and p.requires_grad]
    return [{"params": body, "lr": lr, "name": "backbone"}, {"params": head, "lr": 10 * lr, "name": "head"}]


# k1 x k2 x lambda_value: Zhong et al.'s setting (20, 6, 0.3) and larger neighbourhoods.
RERANK_GRID = tuple((k1, k2, lam) for k1 in (20, 30, 50, 80) for k2 in (6, 10) for lam in (0.3, 0.1))

FROZEN = ("backbone.net.conv1", "backbone.net.conv2", "backbone.net.conv3")


def _hooks(model):
    return [FreezeSchedule(FROZEN, {})]


@register_recipe("osnet")
def osnet() -> Recipe:
    return Recipe(name="osnet", task="image", build_model=_build, compute_loss=ce_triplet_loss(),
                  extract=extract, height=256, width=128, num_instances=4, batch_size=64,
                  optimizer="adam", lr=1e-4, weight_decay=0.0, param_groups=_groups, epochs=4,
                  scheduler="cosine", warmup_epochs=0.2, warmup_factor=0.1, metric="cosine", label_smoothing=0.1,
                  build_transforms=partial(build_transforms, pad=0, random_erasing=0.0),
                  flip_test=True, rerank=True, rerank_grid=RERANK_GRID, val_ids=8, hooks=_hooks,
                  channels_last=True, onnx_eval=True)


@register_recipe("osnet_full")
def osnet_full() -> Recipe:
    """``osnet`` with every layer training (no frozen stages): the full fine-tune."""
    return dataclasses.replace(osnet(), name="osnet_full", hooks=[])
