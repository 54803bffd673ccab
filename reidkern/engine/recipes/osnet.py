"""Fine-tuning the real OSNet x0.25 ReID model (MSMT17 weights of ../shared/data/reid-mini) on a
new dataset: the strong baseline's head and losses (BNNeck, label-smoothed CE + batch-hard triplet,
warm-up) on a pretrained embedding.

What differs from training from scratch, and why:

* the backbone is the BN-folded ONNX export (no BatchNorm in its convolutions), so its own
  learning rate is small (3e-5, Adam); the new BNNeck + classifier learn 10× faster;
* the embedding's fc BatchNorm1d keeps its MSMT17 running statistics (eval mode);
* test features are the 512-d embedding before the BNNeck (``neck_feat="before"``), the space the
  zero-shot model is evaluated in — the before/after comparison is like for like;
* a short cosine schedule: 6 epochs with 1 epoch of warm-up (stretched to ``--steps``);
* the stem and the first two stages (``conv1``..``conv3``, the high-resolution layers) stay frozen
  (a :class:`~reidkern.engine.hooks.FreezeSchedule` hook): on CPU the backward pass through them is
  most of a step's time, and the MSMT17 low-level filters transfer as they are. ``get_recipe("osnet",
  hooks=[])`` fine-tunes everything.

``model_kwargs["weights"]`` defaults to reid-mini's ``osnet_x0_25_msmt17.onnx`` (found through
``reidkern.data.reid_mini_dir``; ``$REIDKERN_DATA`` points elsewhere).
"""
from __future__ import annotations

import os

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


FROZEN = ("backbone.net.conv1", "backbone.net.conv2", "backbone.net.conv3")


def _hooks(model):
    return [FreezeSchedule(FROZEN, {})]


@register_recipe("osnet")
def osnet() -> Recipe:
    return Recipe(name="osnet", task="image", build_model=_build, compute_loss=ce_triplet_loss(),
                  extract=extract, height=256, width=128, num_instances=4, batch_size=64,
                  optimizer="adam", lr=3e-5, weight_decay=5e-4, param_groups=_groups, epochs=6,
                  scheduler="cosine", warmup_epochs=1, warmup_factor=0.1, metric="cosine",
                  flip_test=True, rerank=True, val_ids=8, hooks=_hooks,
                  channels_last=True, onnx_eval=True)
