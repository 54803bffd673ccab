"""LA-Transformer's recipes, from the official training notebook (SiddhantKapil/LA-Transformer):

* ``la_transformer``: Adam 3e-4, weight decay 5e-4, batch 32 drawn by a plain shuffle (no P×K),
  30 epochs, 224×224 by bicubic resize (train and test, as the official code), random flip only;
  no scheduler (the notebook builds a StepLR it never steps) — the lr only changes at the blockwise
  unfreezing steps; the sum of the 14 part cross-entropies, plain (``label_smoothing`` 0, as the
  official code; the recipe field is passed to the model and smooths every part's CE); test
  features without flip. The plain shuffle draws no identities, so ``num_instances`` must stay 1
  (pass ``train_sampler=None`` with ``num_instances=K`` for P×K batches, as the improved recipe).
* ``la_transformer_improved``: the note's three improvements (y-pooling, AM-Softmax + batch-hard
  triplet, flip test); P×K batches (8 × 4) since the triplet loss needs positives.

Blockwise unfreezing (:func:`blockwise_unfreezing`), as the official loop runs it: every ViT block
frozen at first; at epoch 0 the last two are released, then one more every 2 epochs (block 0 at
epoch 20); the lr is multiplied by 0.8 at each of these epochs (epoch 0 included, so the first
epoch trains at 2.4e-4) and keeps being multiplied every 2 epochs after all blocks are free.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List

import numpy as np
import torch

from reidkern.engine.hooks import FreezeSchedule
from reidkern.engine.recipe import Recipe, fixed_fields, register_recipe

from ._self_loss import SmoothedBuilder, build_with_weights, eval_forward, self_loss

__all__ = ["ShuffleSampler", "blockwise_unfreezing", "build_la_transformer", "la_compute_loss",
           "la_extract", "la_transformer_recipe", "la_transformer_improved_recipe"]


def blockwise_unfreezing(depth: int = 12, epochs: int = 30, every: int = 2, first: int = 2, per_step: int = 1,
                         lr_factor: float = 0.8, prefix: str = "backbone.blocks") -> FreezeSchedule:
    """The official blockwise fine-tuning as an engine :class:`~reidkern.engine.FreezeSchedule`.

    All ``depth`` blocks (``{prefix}.{i}``) start frozen (the patch embedding, position embedding,
    final norm and classifiers train from the start, as in the official code). At epoch 0 the last
    ``first`` blocks are released; at every ``every``-th epoch after it ``per_step`` more (from the
    top); lr × ``lr_factor`` at every one of these epochs up to ``epochs``. The official loop
    (``unfreeze_blocks(model, k)`` releases ``blocks[11 - k:]`` with k = 1, 2, …) gives first = 2,
    per_step = 1 — not "two more every 2 epochs" as it is sometimes described.

    Raises ValueError for non-positive counts.
    """
    for name, v in (("depth", depth), ("every", every), ("first", first), ("per_step", per_step)):
        if v < 1:
            raise ValueError(f"{name}: expected >= 1, got {v}")
    order = [f"{prefix}.{i}" for i in reversed(range(depth))]
    schedule: Dict[int, List[str]] = {}
    released = 0
    for epoch in range(0, max(epochs, 1), every):
        n = first if epoch == 0 else per_step
        schedule[epoch] = order[released:released + n]
        released += len(schedule[epoch])
    return FreezeSchedule(order, schedule, lr_factor=lr_factor)


@fixed_fields(num_instances=(1, "a plain shuffle draws no identities; train_sampler=None gives P×K batches"))
class ShuffleSampler(torch.utils.data.Sampler):
    """A plain reshuffle of every training image each epoch (the official ``DataLoader(shuffle=
    True)``), seeded by ``(seed, epoch)``; ``set_epoch`` like the identity samplers."""

    def __init__(self, records, batch_size: int = 32, num_instances: int = 1, seed: int = 0):
        self.n, self.seed, self.epoch = len(records), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        return iter(rng.permutation(self.n).tolist())

    def __len__(self) -> int:
        return self.n


def build_la_transformer(num_classes: int, weights=None, **kwargs):
    """``LATransformer(num_classes, **kwargs)``; ``weights``: a timm ViT-B/16, official
    LA-Transformer or reidkern checkpoint (see :meth:`reidkern.models.LATransformer.load_weights`)."""
    from reidkern.models.la_transformer import LATransformer

    return build_with_weights(LATransformer, num_classes, weights, **kwargs)


la_compute_loss = self_loss  # Σ of the 14 part CEs (+ triplet with metric_loss): LATransformer.loss
la_extract = eval_forward  # test features [B, 14·768]: per-part L2 norm × 1/√14, concatenated


def _transforms(height, width, train):
    from reidkern.data import build_transforms

    # bicubic resize + flip only (the official transforms.Resize((224, 224), interpolation=3))
    return build_transforms(height, width, train, pad=0, random_erasing=0.0, interpolation="bicubic")


def _unfreezing_hooks(model):
    # epochs=1000: the lr keeps its ×0.8 every 2 epochs for any run length, as the official loop
    from reidkern.engine import unwrap

    return [blockwise_unfreezing(depth=len(unwrap(model).backbone.blocks), epochs=1000)]


def la_transformer_recipe(**kw) -> Recipe:
    r = Recipe(name="la_transformer", task="image", build_model=SmoothedBuilder(build_la_transformer),
               compute_loss=la_compute_loss, extract=la_extract, height=224, width=224, num_instances=1,
               batch_size=32, optimizer="adam", lr=3e-4, weight_decay=5e-4, epochs=30, scheduler="step",
               milestones=(), warmup_epochs=0, metric="cosine", label_smoothing=0.0,
               flip_test=False, train_sampler=ShuffleSampler, build_transforms=_transforms,
               hooks=_unfreezing_hooks)
    return dataclasses.replace(r, **kw)  # not setattr: the recipe rebinds label_smoothing and checks fields


def la_transformer_improved_recipe(**kw) -> Recipe:
    r = la_transformer_recipe(name="la_transformer_improved", num_instances=4, train_sampler=None,
                              flip_test=True,
                              model_kwargs={"y_pooling": True, "metric_loss": True, "flip_test": True})
    return dataclasses.replace(r, **kw)


register_recipe("la_transformer")(la_transformer_recipe)
register_recipe("la_transformer_improved")(la_transformer_improved_recipe)
