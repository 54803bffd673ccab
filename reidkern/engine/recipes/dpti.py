"""DPTI's recipe (``reidkern train dpti``): no public code, so the schedule is the field's
standard ResNet-50 ReID recipe (Luo et al., "Bag of Tricks", 2019), marked *unverified* in
docs/models/dpti.md: Adam 3.5e-4, weight decay 5e-4, 120 epochs, linear warm-up over 10 epochs from
×0.01, ×0.1 at epochs 40 and 70; P×K = 16 × 4 at 256×128 with flip, pad-crop and random erasing;
loss α·CE + β·triplet + γ·diversity (:meth:`reidkern.models.DPTI.loss`), the CE label-smoothed by
the recipe's ``label_smoothing`` (passed to the model; default 0, the model's default: the paper
does not mention smoothing); cosine distance on the
(N+1)·d descriptor at test time, no flip averaging (the paper does not use it). Before each test
evaluation the BatchNorm statistics are re-estimated over 16 training batches (``precise_bn=16``,
reidkern's choice: a randomly initialised model's running statistics are still 0 / 1, which scored
another network than the one trained; see docs/models/dpti.md).
"""
from __future__ import annotations

import dataclasses

from reidkern.engine.recipe import Recipe, register_recipe

from ._self_loss import SmoothedBuilder, build_with_weights, eval_forward, self_loss

__all__ = ["build_dpti", "dpti_compute_loss", "dpti_extract", "dpti_recipe"]


def build_dpti(num_classes: int, weights=None, **kwargs):
    """``DPTI(num_classes, **kwargs)``; ``weights``: a torchvision ResNet-50 file/state_dict for
    the backbone or a DPTI checkpoint (see :meth:`reidkern.models.DPTI.load_weights`)."""
    from reidkern.models.dpti import DPTI

    return build_with_weights(DPTI, num_classes, weights, **kwargs)


dpti_compute_loss = self_loss  # α·CE + β·triplet + γ·diversity (DPTI.loss)
dpti_extract = eval_forward  # test descriptor [B, (N+1)·d]: weighted parts and the global vector


def dpti_recipe(**kw) -> Recipe:
    r = Recipe(name="dpti", task="image", build_model=SmoothedBuilder(build_dpti), compute_loss=dpti_compute_loss,
               extract=dpti_extract, height=256, width=128, num_instances=4, batch_size=64,
               optimizer="adam", lr=3.5e-4, weight_decay=5e-4, epochs=120, scheduler="step",
               milestones=(40, 70), gamma=0.1, warmup_epochs=10, warmup_factor=0.01, metric="cosine",
               label_smoothing=0.0, flip_test=False, precise_bn=16)
    return dataclasses.replace(r, **kw)  # not setattr: the recipe rebinds label_smoothing and checks fields


register_recipe("dpti")(dpti_recipe)
