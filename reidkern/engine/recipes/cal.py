"""CAL's recipe (``reidkern train cal``): the AGW visible–infrared baseline's schedule and sampler.

AGW (mangye16/Cross-Modal-Re-ID-baseline, ``train.py``), which CAL builds on: SGD (momentum 0.9,
Nesterov, weight decay 5e-4), lr 0.1 for the new layers and 0.01 for the backbone, 10 warm-up
epochs from 0.1·lr, ×0.1 at epochs 20 and 50, 81 epochs; batches of 8 identities × (4 visible + 4
infrared) at 288×144, pad-10 random crop and horizontal flip. CAL's own settings (N_p, α, λ1–λ4,
σ …) are reidkern.models.CAL's constructor defaults (``model_kwargs`` overrides them).

MatchDistill's test matching: :class:`MatchingHook` clears the model's matching record when the
last learning-rate stage starts (the paper keeps the most frequent matching "in the last stage of
training") and freezes the most frequent one after the last step. The record and the frozen
matching live in the model's state_dict, so they survive checkpoints and resumes.

Evaluation: the SYSU-MM01 protocol (``reidkern.metrics.protocols.evaluate_sysu_mm01``): infrared
queries against a visible gallery, distinct-identity CMC, mAP, mINP; ``evaluate_trials`` runs it
over a gallery pool and its trials (10 for SYSU-MM01) and reports mean ± std.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence

import torch

from reidkern.engine.recipe import Recipe, fixed_fields, register_recipe
from reidkern.engine.schedule import to_steps
from reidkern.models.cal import CAL

__all__ = ["MatchingHook", "cal_compute_loss", "cal_extract", "cal_param_groups", "cal_recipe",
           "evaluate_trials", "extract_vi_features"]


def _unwrap(model):
    from reidkern.engine.trainer import unwrap

    return unwrap(model)


@fixed_fields(label_smoothing=(0.0, "CAL.loss is the official plain cross-entropy"))
def cal_compute_loss(model, batch):
    """CAL's total loss on a batch dict (img, pid, modality); logs every term."""
    out = model(batch["img"], batch["modality"], batch["pid"])
    return _unwrap(model).loss(out)


def cal_extract(model, batch):
    """Test features [B, (N_p+1)·2048] (global + matched part features; no query–gallery pairing)."""
    return model(batch["img"], batch["modality"])


def cal_param_groups(model, lr: float) -> List[Dict]:
    """AGW's groups: the backbone at 0.1·lr, every new layer (DRM, TSAA, BNNecks, classifiers) at lr."""
    m = _unwrap(model)
    backbone = [p for p in m.backbone.parameters() if p.requires_grad]
    ids = {id(p) for p in backbone}
    rest = [p for p in m.parameters() if p.requires_grad and id(p) not in ids]
    return [{"params": backbone, "lr": 0.1 * lr}, {"params": rest, "lr": lr}]


class MatchingHook:
    """Clears the MatchDistill record when the last lr stage starts (recipe epoch ``last_stage``,
    default the recipe's last milestone, stretched to the run) and freezes the most frequent
    matching after the final step. Stateless: the record lives in the model's state_dict."""

    def __init__(self, last_stage: Optional[float] = None):
        self.last_stage = last_stage

    def after_step(self, trainer, step, out):
        model = _unwrap(trainer.model)
        recipe = trainer.recipe
        stage = self.last_stage if self.last_stage is not None else max(recipe.milestones, default=0)
        start = to_steps(stage, recipe.epochs, trainer.total_steps)
        if step == start and 0 < start < trainer.total_steps:
            model.match_record.clear()
        if step == trainer.total_steps:
            model.freeze_matching()
            trainer.log({"step": step, "frozen_matching": [int(v) for v in model.matching]})


def _loader(records, recipe, transform, num_workers):
    from reidkern.data import ImageDataset
    from reidkern.engine.loader import eval_loader

    return eval_loader(ImageDataset(records, transform), batch_size=64, num_workers=num_workers)


def extract_vi_features(model, recipe, records: Sequence, *, transform=None, device=None, amp=None,
                        num_workers: int = 0, progress: bool = False, desc: str = "extract"):
    """CAL test features of ``records`` (each through its modality's stream and DRM):
    :class:`reidkern.engine.Features`. ``transform``: PIL → tensor (or {modality: callable});
    default the recipe's test pipeline."""
    from reidkern.data import build_transforms
    from reidkern.engine import extract_features

    if transform is None:
        transform = build_transforms(recipe.height, recipe.width, train=False)
    return extract_features(model, _loader(records, recipe, transform, num_workers), flip=recipe.flip_test,
                            extract=recipe.extract, device=device, amp=amp, progress=progress, desc=desc)


def evaluate_trials(model, recipe, query: Sequence, gallery_pool: Sequence, trials: Optional[Sequence] = None, *,
                    transform=None, device=None, amp=None, num_workers: int = 0, progress: bool = False):
    """SYSU-MM01 protocol over trials: infrared ``query`` records against the visible
    ``gallery_pool`` (every candidate), each trial an index list into the pool (None: one trial over
    the pool). Returns :class:`reidkern.metrics.protocols.TrialsResult` (mean ± std)."""
    from reidkern.metrics.protocols import evaluate_sysu_mm01

    was_training = model.training
    model.eval()
    try:
        q = extract_vi_features(model, recipe, query, transform=transform, device=device, amp=amp,
                                num_workers=num_workers, progress=progress, desc="query")
        g = extract_vi_features(model, recipe, gallery_pool, transform=transform, device=device, amp=amp,
                                num_workers=num_workers, progress=progress, desc="gallery")
    finally:
        model.train(was_training)
    return evaluate_sysu_mm01(q.feats, g.feats, q.pids, g.pids, q.camids, g.camids, trials=trials,
                              metric=recipe.metric, missing="skip")


@fixed_fields(rerank=(False, "the SYSU-MM01 protocol here has no re-ranking"),
              onnx_eval=(False, "features from the PyTorch model"),
              rerank_params=((20, 6, 0.3), "no re-ranking, so no (k1, k2, lambda_value)"))
def _evaluate(model, recipe, query, gallery, *, device=None, amp=None, num_workers=0, progress=False):
    """The engine's evaluation: the SYSU-MM01 protocol on one gallery (one trial)."""
    res = evaluate_trials(model, recipe, query, gallery, None, device=device, amp=amp,
                          num_workers=num_workers, progress=progress)
    return {"mAP": res.mean["mAP"], **{k: v for k, v in res.mean.items() if k != "mAP"}}


def _transforms(height, width, train):
    from reidkern.data import build_transforms

    # AGW: pad 10 + random crop, horizontal flip, no erasing.
    return build_transforms(height, width, train, pad=10, random_erasing=0.0)


def _sampler(records, batch_size, num_instances, seed=0):
    from reidkern.data.samplers import VisibleInfraredSampler

    return VisibleInfraredSampler(records, batch_size, num_instances, seed=seed)


def cal_recipe(**overrides) -> Recipe:
    r = Recipe(
        name="cal", task="visible-infrared", build_model=CAL, compute_loss=cal_compute_loss,
        extract=cal_extract, height=288, width=144, num_instances=4, batch_size=64,
        optimizer="sgd", lr=0.1, weight_decay=5e-4, momentum=0.9, param_groups=cal_param_groups,
        epochs=81, scheduler="step", milestones=(20, 50), gamma=0.1, warmup_epochs=10, warmup_factor=0.1,
        metric="cosine", hooks=[MatchingHook()], train_sampler=_sampler,
        build_transforms=_transforms, evaluate=_evaluate, label_smoothing=0.0, flip_test=False, val_ids=0)
    return dataclasses.replace(r, **overrides)  # not setattr: the recipe checks the fields it does not read


@register_recipe("cal")
def _cal() -> Recipe:
    return cal_recipe()
