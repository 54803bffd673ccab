"""LF2's recipes: ``lf2-source`` (stage 1, supervised source pre-training) and ``lf2`` (stage 2,
unsupervised adaptation to an unlabeled target set: mean teacher, fusion features, pseudo-labels
every epoch). Defaults from the official code (DJEddyking/LF2); see docs/models/lf2.md.

Stage 2 on the engine (:class:`reidkern.engine.Trainer`, single process):

* an "epoch" is ``iters`` (official 400) optimiser steps; each step's batch holds three P×K
  batches of 64 (16 pseudo-identities × 4) one after the other — drawn by the global, upper and
  lower pseudo-labels (official: three loaders) — so ``batch_size`` is 192;
* :class:`LF2PseudoLabelHook` (start of every epoch): clustering features of the whole target
  training set (test transform, flip-averaged) → one clustering per branch → labels for the
  sampler and the loss, classifiers from the global centroids, Adam's state cleared (the official
  code builds a new Adam every epoch); its state (labels, clustering RNG) is in every checkpoint;
* :class:`LF2TeacherHook` (after every step): teacher ← EMA of the student,
  α = min(1 − 1/(t+1), 0.999) with t = the global iteration (official ``_update_ema_variables``);
  the teacher lives inside :class:`~reidkern.models.lf2.LF2` (the fusion and the test features need
  it), so the engine's generic ``EMATeacher`` (which copies the whole model) is not used;
* the loss reads each sample's pseudo-labels by its ``index``; the true target labels are never
  used for training (the hook may *report* NMI/ARI against them, see ``report_quality``).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from reidkern.engine.recipe import Recipe, register_recipe
from reidkern.models.lf2 import LF2, LF2Loss, LF2Net, lf2_osnet_x0_25, lf2_resnet50
from reidkern.ops._validate import check_label_smoothing
from reidkern.uda import PseudoLabelStep, pseudo_label_quality
from reidkern.uda.lf2_epoch import BRANCHES, extract_clustering_features, pseudo_label_epoch

__all__ = ["LF2Sampler", "LF2PseudoLabelHook", "LF2StepLoss", "LF2TeacherHook", "build_lf2", "build_lf2_trainer",
           "evaluate_target", "lf2_compute_loss", "lf2_extract", "lf2_param_groups", "lf2_recipe",
           "lf2_source_recipe"]

log = logging.getLogger(__name__)

PK_BATCH = 64  # official: 16 identities × 4 images per label set


def build_lf2(num_classes: int = 0, *, backbone: str = "resnet50", weights=None, num_clusters: int = 700,
              source_weights=None, **head_kwargs) -> LF2:
    """Stage-2 model: student and teacher LF2 networks (+ fusion).

    Args:
        num_classes: ignored (the target's identities are unknown); the classifier has
            ``num_clusters`` rows (k-means' k; DBSCAN resizes it every epoch).
        backbone: ``"resnet50"`` (the paper's) or ``"osnet_x0_25"`` (LF2 heads on OSNet).
        weights: backbone weights (torchvision ResNet-50 file, or OSNet ``.onnx`` / torchreid
            ``.pth``), used when ``source_weights`` is None.
        source_weights: a stage-1 ``lf2-source`` checkpoint (file, or its model state_dict) to start
            from (official: both networks from the source model). Its classifier (source identities)
            is skipped when its size differs, with a UserWarning; any other mismatch raises.
        head_kwargs: ``pooling`` / ``part_init`` of :class:`~reidkern.models.lf2.LF2Net` (OSNet's
            defaults: GAP and identity part projections; ResNet-50's: the official head).

    Raises:
        ValueError: unknown backbone, bad head arguments, ``source_weights`` not of this backbone
            and head (the message names it and the differing keys).
    """
    if backbone == "resnet50":
        net = lf2_resnet50(num_classes=num_clusters, weights=weights, **head_kwargs)
    elif backbone in ("osnet_x0_25", "osnet"):
        net = lf2_osnet_x0_25(num_classes=num_clusters, weights=weights, **head_kwargs)
    else:
        raise ValueError(f"backbone: expected 'resnet50' or 'osnet_x0_25', got {backbone!r}")
    if source_weights is not None:
        # The shared rule (reidkern.models.weights.load_weights): the source classifier (source
        # identities) is skipped when its size differs from num_clusters — set_classifier replaces
        # it from the cluster centres every epoch anyway — and any other difference raises (it
        # used to be dropped silently, leaving e.g. a whole trunk at random init).
        from reidkern.models.weights import load_weights

        try:
            load_weights(net, source_weights, ignore_prefixes=("classifier.",) if net.classifier is None else ())
        except ValueError as exc:
            raise ValueError(f"source_weights: not an lf2-source checkpoint of this backbone: {exc}") from exc
    return LF2(net)


class LF2Sampler(torch.utils.data.Sampler):
    """Stage-2 index order: ``iters`` batches, each three P×K blocks of ``pk_batch`` indices drawn
    by the global, upper and lower pseudo-labels (reidkern's ``RandomIdentitySampler``, cycled
    like the official ``IterLoader``; outliers −1 are never drawn).

    ``set_labels({branch: int64 [N]})`` before iterating (until then it yields ``len()``
    placeholder zeros, so that a loader can count its steps); ``set_epoch(e)`` makes epoch ``e``
    reproducible (seed ``(seed, e, branch)``). ``len()`` = iters · 3 · pk_batch.

    Raises:
        ValueError: iterating without labels; a branch with fewer clusters than P.
    """

    def __init__(self, num_samples: int, iters: int = 400, pk_batch: int = PK_BATCH, num_instances: int = 4,
                 seed: int = 0):
        if pk_batch % num_instances:
            raise ValueError(f"pk_batch: {pk_batch} is not divisible by num_instances={num_instances}")
        self.num_samples, self.iters, self.pk_batch = num_samples, iters, pk_batch
        self.num_instances, self.seed, self.epoch = num_instances, seed, 0
        self.labels: Optional[Dict[str, np.ndarray]] = None

    def set_labels(self, labels: Dict[str, np.ndarray]) -> None:
        for b in BRANCHES:
            if len(labels[b]) != self.num_samples:
                raise ValueError(f"labels[{b!r}]: {len(labels[b])} labels for {self.num_samples} samples")
        self.labels = {b: np.asarray(labels[b]) for b in BRANCHES}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _stream(self, branch_index: int, labels: np.ndarray):
        from reidkern.data import RandomIdentitySampler

        keep = np.flatnonzero(labels >= 0)
        if len(np.unique(labels[keep])) < self.pk_batch // self.num_instances:
            raise ValueError(f"labels: the {BRANCHES[branch_index]} clustering has "
                             f"{len(np.unique(labels[keep]))} clusters, fewer than P = "
                             f"{self.pk_batch // self.num_instances} identities per batch")
        sampler = RandomIdentitySampler(labels[keep].tolist(), self.pk_batch, self.num_instances,
                                        seed=int(np.random.SeedSequence([self.seed, self.epoch, branch_index])
                                                 .generate_state(1)[0]))
        while True:
            batches = sampler.batches()
            if not batches:
                raise ValueError("labels: the P×K sampler gave no batch")
            for b in batches:
                yield [int(keep[i]) for i in b]

    def epoch_indices(self, epoch: int) -> List[int]:
        """The flat index list of ``epoch`` (for :class:`reidkern.engine.loader.TrainLoader`)."""
        self.set_epoch(epoch)
        return list(iter(self))

    def __iter__(self):
        if self.labels is None:
            # Before the first pseudo-label epoch a loader may ask for the epoch's length only:
            # placeholder indices (the loss refuses to run without pseudo-labels).
            return iter([0] * len(self))
        streams = [self._stream(i, self.labels[b]) for i, b in enumerate(BRANCHES)]
        out: List[int] = []
        for _ in range(self.iters):
            for s in streams:
                out.extend(next(s))
        return iter(out)

    def __len__(self) -> int:
        return self.iters * 3 * self.pk_batch


class LF2TeacherHook:
    """After every optimiser step: ``model.update_teacher(step − 1, alpha)`` (official global
    iteration ``epoch · iters + i``). Stateless: the teacher is part of the model's state."""

    def __init__(self, alpha: float = 0.999):
        self.alpha = alpha

    def after_step(self, trainer, step: int, out) -> None:
        from reidkern.engine import unwrap

        unwrap(trainer.model).update_teacher(step - 1, self.alpha)


class LF2PseudoLabelHook:
    """Start of every epoch: LF2's pseudo-label step on the whole target training set.

    Args:
        records: the target training records (labels ignored); None = ``trainer.dataset.train``.
        sampler: the run's :class:`LF2Sampler`, or any object with ``set_labels`` (gets the new
            labels).
        step: a :class:`reidkern.uda.PseudoLabelStep` (k-means or DBSCAN).
        height, width: test-transform size (None: the trainer's recipe's). batch_size: extraction
            batch size.
        report_quality: also log NMI / ARI / #clusters against the records' pids (reporting only;
            meaningful when the "unlabeled" set has true ids, as in benchmarks).
        loader: an optional TrainLoader whose cached epoch is dropped when labels change.
        flip: flip-average the clustering features (official: yes; None: ``recipe.flip_test``).
        seed_from_recipe: on a fresh start, re-seed ``step``'s clustering RNG with the trainer's
            ``recipe.seed`` (what the ``lf2`` recipe's hooks do, so that a seed override reaches
            the clustering as it reaches sampling and initialisation).
    """

    def __init__(self, records: Optional[Sequence], sampler, step: PseudoLabelStep, height: Optional[int] = 256,
                 width: Optional[int] = 128, batch_size: int = 128, report_quality: bool = False, loader=None,
                 num_workers: int = 0, flip: Optional[bool] = True, seed_from_recipe: bool = False):
        self.records = None if records is None else list(records)
        self.seed_from_recipe = bool(seed_from_recipe)
        self.sampler, self.step = sampler, step
        self.height, self.width, self.batch_size = height, width, batch_size
        self.report_quality, self.loader, self.num_workers = report_quality, loader, num_workers
        self.flip = flip
        self.quality: List[dict] = []

    def _apply(self, trainer) -> None:
        from reidkern.engine import unwrap

        labels = self.step.labels
        model = unwrap(trainer.model)
        model.pseudo_labels = torch.from_numpy(np.stack([labels[b] for b in BRANCHES])).to(
            next(model.parameters()).device)
        self.sampler.set_labels(labels)
        loader = self.loader if self.loader is not None else getattr(trainer, "loader", None)
        if loader is not None and hasattr(loader, "refresh"):
            loader.refresh()  # the epoch's batches depend on the labels

    def on_train_start(self, trainer) -> None:
        if self.step.labels is not None:  # resumed: labels restored by load_state_dict
            self._apply(trainer)
        elif self.seed_from_recipe:
            self.step.rng = np.random.Generator(np.random.PCG64(trainer.recipe.seed))

    def on_epoch_start(self, trainer, epoch: int) -> None:
        import time

        from reidkern.data import ImageDataset, build_transforms
        from reidkern.engine import unwrap
        from reidkern.engine.loader import eval_loader

        if self.step.epoch > epoch:  # resumed mid-epoch with this epoch's labels already made
            return
        if self.records is None:  # built by the recipe: the trainer's dataset is the target
            self.records = list(trainer.dataset.train)
        recipe = trainer.recipe
        height = self.height or recipe.height
        width = self.width or recipe.width
        flip = recipe.flip_test if self.flip is None else self.flip
        model = unwrap(trainer.model)
        t0 = time.perf_counter()
        ds = ImageDataset(self.records, build_transforms(height, width, train=False))
        dev = next(model.parameters()).device
        batches = ({"img": b["img"].to(dev)} for b in eval_loader(ds, self.batch_size, self.num_workers))
        feats = extract_clustering_features(model, batches, flip=flip)
        t1 = time.perf_counter()
        results = pseudo_label_epoch(model, self.step, feats)
        self._apply(trainer)
        trainer.optimizer.state.clear()  # official: a new Adam every epoch
        rec = {"epoch": epoch, "pseudo_label_s": round(time.perf_counter() - t0, 1),
               "extract_s": round(t1 - t0, 1), "fallback": bool(self.step.fell_back)}
        for b in BRANCHES:
            rec[f"{b}_clusters"] = results[b].num_clusters
            rec[f"{b}_outliers"] = results[b].num_outliers
            if self.report_quality:
                q = pseudo_label_quality(results[b].labels, [r[1] for r in self.records])
                rec[f"{b}_nmi"], rec[f"{b}_ari"] = round(q["nmi"], 4), round(q["ari"], 4)
        self.quality.append(rec)
        trainer.log(rec)

    def state_dict(self) -> dict:
        return {"step": self.step.state_dict(), "quality": list(self.quality)}

    def load_state_dict(self, state: dict) -> None:
        self.step.load_state_dict(state["step"])
        self.quality = list(state.get("quality", []))


def lf2_compute_loss(model, batch, loss_fn: Optional[LF2Loss] = None):
    """Stage-2 loss of one step: the batch is three P×K blocks (global, upper, lower sampling);
    each goes through the model separately (official: three encoder calls), labels come from
    ``model.pseudo_labels`` [3, N] by ``batch["index"]``."""
    from reidkern.engine import unwrap

    m = unwrap(model)
    labels = getattr(m, "pseudo_labels", None)
    if labels is None:
        raise ValueError("model: no pseudo-labels yet (LF2PseudoLabelHook runs at each epoch start)")
    img, index = batch["img"], batch["index"].to(labels.device)
    if img.shape[0] % 3:
        raise ValueError(f"batch: expected three P×K blocks, got {img.shape[0]} images")
    n = img.shape[0] // 3
    outs, ys = [], []
    for i in range(3):
        sl = slice(i * n, (i + 1) * n)
        outs.append(model(img[sl]))
        ys.append(labels[i, index[sl]].to(img.device))
    fn = loss_fn or _DEFAULT_LOSS
    return fn(outs[0], ys[0], outs[1], ys[1], outs[2], ys[2])


_DEFAULT_LOSS = LF2Loss()


class LF2StepLoss:
    """The ``lf2`` recipe's ``compute_loss``: :func:`lf2_compute_loss` with an :class:`LF2Loss` of
    the recipe's ``label_smoothing`` (official ε = 0.1; rebound by ``with_label_smoothing`` on every
    override)."""

    def __init__(self, label_smoothing: float = 0.1):
        self.label_smoothing = check_label_smoothing(label_smoothing)
        self.loss_fn = LF2Loss(label_smoothing=self.label_smoothing)

    def with_label_smoothing(self, label_smoothing: float) -> "LF2StepLoss":
        return LF2StepLoss(label_smoothing)

    def __call__(self, model, batch):
        return lf2_compute_loss(model, batch, loss_fn=self.loss_fn)


def lf2_extract(model, batch):
    """Test feature: the teacher's L2-normalised [global, upper, lower] (model in eval mode)."""
    return model(batch["img"])


class _Labels:
    """The pseudo-labels shared by the recipe's hook and the samplers the engine builds each epoch."""

    def __init__(self):
        self.labels = None

    def set_labels(self, labels) -> None:
        self.labels = labels


def lf2_param_groups(backbone_lr_mult: float = 1.0):
    """``Recipe.param_groups`` for stage 2: the student's backbone at ``lr · backbone_lr_mult``,
    everything else that trains (heads, classifier, fusion BatchNorm weights) at ``lr``. The
    official code trains all at one lr (``backbone_lr_mult=1``); a pretrained trunk without
    BatchNorm (OSNet's BN-folded export) keeps its quality only at a smaller lr.

    Raises:
        ValueError: ``backbone_lr_mult`` not > 0.
    """
    if not backbone_lr_mult > 0:
        raise ValueError(f"backbone_lr_mult: expected > 0, got {backbone_lr_mult!r}")

    def groups(model, lr):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        body = [p for n, p in named if n.startswith("student.backbone.")]
        head = [p for n, p in named if not n.startswith("student.backbone.")]
        if backbone_lr_mult == 1.0:
            return [{"params": body + head, "lr": lr}]
        return [{"params": body, "lr": lr * backbone_lr_mult, "name": "backbone"},
                {"params": head, "lr": lr, "name": "head"}]

    return groups


def lf2_recipe(iters: int = 400, method: str = "kmeans", dbscan_kwargs: Optional[dict] = None,
               backbone_lr_mult: float = 1.0, frozen: Sequence[str] = (), **kw) -> Recipe:
    """Stage 2 (official ``target_train.py``): Adam 3.5e-4, weight decay 5e-4, constant lr, 80
    epochs × ``iters`` = 400 iterations, batches of 3 × (16 × 4), random erasing on (target
    fine-tuning only), α = 0.999, k-means with k = ``model_kwargs["num_clusters"]`` (700,
    Duke→Market) or ``method="dbscan"``. No validation split (the target is unlabeled).

    ``backbone_lr_mult``: the student backbone's lr factor (:func:`lf2_param_groups`; official 1).
    ``frozen``: parameter-name prefixes kept frozen (e.g. ``"student.backbone.conv1"``; a
    :class:`~reidkern.engine.hooks.FreezeSchedule`); official none.

    For ``reidkern.engine.train`` / ``reidkern train lf2``: the recipe's ``train_sampler`` and
    ``hooks`` share the pseudo-labels, the hook clusters ``trainer.dataset.train``.
    """
    from reidkern.engine.hooks import FreezeSchedule

    shared = _Labels()

    def train_sampler(records, batch_size, num_instances, seed=0):
        s = LF2Sampler(len(records), iters=iters, pk_batch=batch_size // 3, num_instances=num_instances, seed=seed)
        if shared.labels is not None:
            s.set_labels(shared.labels)
        return s

    def hooks(model):
        k = unwrap_classes(model)
        kmeans_kwargs = {"global": {"init_size": 1500}, "upper": {"init_size": 900}, "lower": {"init_size": 900}}
        step = PseudoLabelStep(BRANCHES, method=method, num_clusters=k, kmeans_kwargs=kmeans_kwargs,
                               dbscan_kwargs=dbscan_kwargs)  # seeded with trainer.recipe.seed at the start
        extra = [FreezeSchedule(tuple(frozen), {})] if frozen else []
        return [LF2PseudoLabelHook(None, shared, step, height=None, width=None, flip=None, seed_from_recipe=True),
                LF2TeacherHook()] + extra

    r = Recipe(name="lf2", task="uda", build_model=build_lf2, compute_loss=LF2StepLoss(0.1), label_smoothing=0.1,
               extract=lf2_extract, height=256, width=128, num_instances=4, batch_size=3 * PK_BATCH,
               optimizer="adam", lr=3.5e-4, weight_decay=5e-4, epochs=80, scheduler="step",
               milestones=(), gamma=0.1, warmup_epochs=0, metric="cosine", flip_test=True, val_ids=0,
               model_kwargs={"backbone": "resnet50", "num_clusters": 700}, train_sampler=train_sampler,
               hooks=hooks, param_groups=lf2_param_groups(backbone_lr_mult))
    return dataclasses.replace(r, **kw)  # not setattr: the recipe rebinds label_smoothing


def unwrap_classes(model) -> int:
    from reidkern.engine import unwrap

    return unwrap(model).student.num_classes


def lf2_osnet_recipe(**kw) -> Recipe:
    """``lf2`` with LF2's heads on OSNet x0.25 (``--weights osnet_x0_25_msmt17.onnx``)."""
    r = lf2_recipe(**kw)
    r.name = "lf2-osnet"
    r.model_kwargs = {"backbone": "osnet_x0_25", "num_clusters": 700}
    return r


class _SourceLoss:
    """Stage 1's loss: label-smoothed CE (the recipe's ``label_smoothing``, official 0.1) on the
    logits + soft triplet (margin 0) on the pooled features."""

    def __init__(self, label_smoothing: float = 0.1):
        self.label_smoothing = check_label_smoothing(label_smoothing)

    def with_label_smoothing(self, label_smoothing: float) -> "_SourceLoss":
        return _SourceLoss(label_smoothing)

    def __call__(self, model, batch):
        import torch.nn.functional as F

        from reidkern.engine import unwrap
        from reidkern.nn import SoftTripletLoss

        pooled, logits = unwrap(model).source_forward(batch["img"])
        y = batch["pid"]
        ce = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        tri = SoftTripletLoss(margin=0.0)(pooled, y)
        return ce + tri, {"ce": float(ce.detach()), "tri": float(tri.detach())}


def _build_source(num_classes: int, backbone: str = "resnet50", weights=None) -> LF2Net:
    if backbone == "resnet50":
        return lf2_resnet50(num_classes=num_classes, weights=weights)
    if backbone in ("osnet_x0_25", "osnet"):
        return lf2_osnet_x0_25(num_classes=num_classes, weights=weights)
    raise ValueError(f"backbone: expected 'resnet50' or 'osnet_x0_25', got {backbone!r}")


def _source_transforms(height: int, width: int, train: bool):
    from reidkern.data import build_transforms

    return build_transforms(height, width, train=train, random_erasing=0.0)  # official: no erasing in stage 1


def lf2_source_recipe(**kw) -> Recipe:
    """Stage 1 (official ``source_pretrain.py``): GAP → BatchNorm (bias frozen) → classifier;
    label-smoothed CE on the logits + soft triplet (margin 0) on the pooled features; Adam 3.5e-4,
    wd 5e-4, warm-up 10 epochs from ×0.01, steps ×0.1 at 40 and 70, 80 epochs × 200 iterations,
    P×K 16 × 4, no random erasing. Test feature: L2-normalised BatchNorm output."""
    r = Recipe(name="lf2-source", task="image", build_model=_build_source, compute_loss=_SourceLoss(0.1),
               extract=lambda model, batch: model.source_forward(batch["img"]),
               height=256, width=128, num_instances=4, batch_size=64, optimizer="adam", lr=3.5e-4,
               weight_decay=5e-4, epochs=80, scheduler="step", milestones=(40, 70), gamma=0.1,
               warmup_epochs=10, warmup_factor=0.01, metric="cosine", label_smoothing=0.1, flip_test=True,
               model_kwargs={"backbone": "resnet50"}, build_transforms=_source_transforms)
    return dataclasses.replace(r, **kw)


register_recipe("lf2")(lf2_recipe)
register_recipe("lf2-osnet")(lf2_osnet_recipe)
register_recipe("lf2-source")(lf2_source_recipe)


def evaluate_target(model, dataset, recipe, batch_size: int = 128, num_workers: int = 0, progress: bool = False) -> dict:
    """The teacher's R1 / mAP / mINP on ``dataset``'s query/gallery (Market protocol, cosine,
    flip-averaged test features)."""
    from reidkern.data import ImageDataset, build_transforms
    from reidkern.engine import extract_features, unwrap
    from reidkern.engine.loader import eval_loader
    from reidkern.metrics import evaluate_features

    m = unwrap(model)
    tf = build_transforms(recipe.height, recipe.width, train=False)
    out = []
    for split in (dataset.query, dataset.gallery):
        loader = eval_loader(ImageDataset(split, tf), batch_size, num_workers)
        out.append(extract_features(m, loader, flip=recipe.flip_test, extract=recipe.extract, progress=progress))
    (qf, qp, qc, _), (gf, gp, gc, _) = out
    r = evaluate_features(qf, gf, qp, gp, qc, gc, metric=recipe.metric, progress=False)
    return {"mAP": float(r.mAP), "R1": float(r.rank(1)), "mINP": float(r.mINP)}


def build_lf2_trainer(model: LF2, dataset, *, epochs: int, iters: int = 400, recipe: Optional[Recipe] = None,
                      method: str = "kmeans", num_clusters: int = 700, dbscan_kwargs: Optional[dict] = None,
                      pk_batch: int = PK_BATCH, seed: int = 0, out_dir: Optional[str] = None,
                      report_quality: bool = False, evaluate: bool = True, num_workers: int = 0,
                      extract_batch_size: int = 128, progress: bool = True, cluster_flip: bool = True,
                      frozen: Sequence[str] = ()) -> "Trainer":
    """A :class:`reidkern.engine.Trainer` for LF2 stage 2 on ``dataset.train`` (labels unused).

    Args:
        model: the :class:`LF2` (e.g. :func:`build_lf2`).
        dataset: a ``reidkern.data`` dataset (``train`` = unlabeled target images; ``query`` /
            ``gallery`` for the per-epoch evaluation when ``evaluate``).
        epochs, iters: epochs of ``iters`` steps each (official 80 × 400).
        recipe: default ``get_recipe("lf2")``; its batch size must be 3 · pk_batch.
        method, num_clusters, dbscan_kwargs: the clustering (see :class:`PseudoLabelStep`;
            k-means ``init_size`` 1500 global / 900 parts as the official code).
        seed: sampling, augmentation and clustering seed.
        report_quality: log NMI / ARI of the pseudo-labels against ``dataset.train`` pids.
        evaluate: validate (teacher R1 / mAP) after every epoch.
        cluster_flip: flip-average the clustering features (official: yes).
        frozen: parameter-name prefixes kept frozen (e.g. ``"student.backbone.conv1"``); the
            recipe's ``param_groups`` set the learning rates (see :func:`lf2_param_groups`).

    Raises:
        ValueError: a recipe batch size other than 3 · pk_batch.
    """
    from reidkern.data import ImageDataset
    from reidkern.data import build_transforms as default_transforms
    from reidkern.engine import Trainer, get_recipe
    from reidkern.engine.loader import TrainLoader

    recipe = recipe or get_recipe("lf2")
    if recipe.batch_size != 3 * pk_batch:
        raise ValueError(f"recipe.batch_size: {recipe.batch_size}, expected 3 x pk_batch = {3 * pk_batch}")
    records = list(dataset.train)
    sampler = LF2Sampler(len(records), iters=iters, pk_batch=pk_batch, num_instances=recipe.num_instances, seed=seed)
    tf = (recipe.build_transforms or (lambda h, w, train: default_transforms(h, w, train=train)))(
        recipe.height, recipe.width, True)
    loader = TrainLoader(ImageDataset(records, tf), sampler.epoch_indices, recipe.batch_size, seed=seed,
                         num_workers=num_workers)
    kmeans_kwargs = {"global": {"init_size": 1500}, "upper": {"init_size": 900}, "lower": {"init_size": 900}}
    step = PseudoLabelStep(BRANCHES, method=method, num_clusters=num_clusters, kmeans_kwargs=kmeans_kwargs,
                           dbscan_kwargs=dbscan_kwargs, seed=seed)
    hooks = [LF2PseudoLabelHook(records, sampler, step, recipe.height, recipe.width, extract_batch_size,
                                report_quality=report_quality, loader=loader, num_workers=num_workers,
                                flip=cluster_flip),
             LF2TeacherHook()]
    if frozen:
        from reidkern.engine.hooks import FreezeSchedule

        hooks.append(FreezeSchedule(tuple(frozen), {}))
    validate = (lambda tr: evaluate_target(tr.model, dataset, recipe, extract_batch_size, num_workers)) \
        if evaluate else None
    return Trainer(recipe, model, loader, total_steps=epochs * iters, out_dir=out_dir, hooks=hooks,
                   validate=validate, eval_every=1, max_epochs=epochs, progress=progress,
                   meta={"method": method, "iters": iters})
