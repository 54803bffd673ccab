"""What one model brings to the training engine: a ``Recipe``.

A recipe is the paper's training defaults in one place — how to build the model, its losses,
parameter groups, sampler and schedule — so that ``reidkern train NAME`` reproduces the paper and
every default stays a keyword a user can override. Recipes register themselves by name
(``register_recipe``) from ``reidkern/engine/recipes/<name>.py``.

The batch every ``compute_loss`` / ``extract`` receives is a dict of tensors collated by the
engine's loader:

    img       float [B, 3, H, W], normalised
    pid       int64 [B]   (training labels 0..num_classes−1)
    camid     int64 [B]
    modality  int64 [B]   (reidkern.data.VISIBLE / INFRARED)
    index     int64 [B]   (position in the split's record list)
    text_ids, text_mask   int64 [B, L] (text-to-image tasks only)
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from reidkern.ops._validate import check_label_smoothing

from .schedule import OPTIMIZERS, SCHEDULERS, check_choice

__all__ = ["Recipe", "register_recipe", "get_recipe", "recipe_names", "fixed_fields"]

LossFn = Callable[[nn.Module, Dict[str, torch.Tensor]], Tuple[torch.Tensor, Dict[str, float]]]
ExtractFn = Callable[[nn.Module, Dict[str, torch.Tensor]], torch.Tensor]


def _all_parameters(model: nn.Module, lr: float) -> List[Dict[str, Any]]:
    return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]


# The callable fields whose ``recipe_fixed`` (see fixed_fields) a Recipe checks, and the two
# that may carry ``with_label_smoothing``.
_PARTS = ("build_model", "compute_loss", "extract", "param_groups", "hooks", "train_sampler", "build_dataset",
          "build_transforms", "evaluate")
_SMOOTHING_PARTS = ("build_model", "compute_loss")


def _why_no_effect(r: "Recipe", name: str) -> Optional[str]:
    """Why the engine does not read ``name`` under ``r``'s other settings, or None when it does.

    These are the engine's own readers (``schedule.build_optimizer`` / ``build_scheduler``,
    ``run.train``'s re-ranking choice), so the rule is the same for every recipe."""
    if name == "momentum":
        if str(r.optimizer).lower() != "sgd":
            return f"with optimizer {r.optimizer!r} (SGD only)"
    elif name in ("milestones", "gamma"):
        if str(r.scheduler).lower() != "step":
            return f"with scheduler {r.scheduler!r} ('step' only)"
        if name == "gamma" and not r.milestones:
            return "with no milestones (milestones=())"
    elif name == "warmup_factor":
        if not r.warmup_epochs > 0:
            return f"with warmup_epochs={r.warmup_epochs!r} (no warm-up)"
    elif name == "rerank_grid":
        if not r.rerank:
            return "with rerank=False (the grid chooses the re-ranking's k1, k2, lambda_value)"
        if not r.val_ids:
            return f"with val_ids={r.val_ids!r} (the grid is chosen on the validation split)"
        if r.evaluate is not None:
            return "with a task protocol (evaluate) in place of the image-ReID one"
    return None


# Fields the engine reads only under another field's setting (see _why_no_effect). A value other
# than the recipe's own one (``Recipe._defaults``) under a setting that ignores it is refused.
_MODE_FIELDS = ("momentum", "milestones", "gamma", "warmup_factor", "rerank_grid")


def _plain(v: Any) -> Any:
    """Lists and tuples compared alike (``milestones=[40, 70]`` is ``(40, 70)``)."""
    return tuple(_plain(x) for x in v) if isinstance(v, (list, tuple)) else v


def fixed_fields(**fields: Tuple[Any, str]):
    """Mark a recipe part (a function or class used as ``compute_loss``, ``train_sampler``,
    ``evaluate`` …) as not reading some recipe fields: ``fields`` maps a field name to
    ``(the only value accepted, why the part does not read it)``. A :class:`Recipe` using the
    part raises ValueError naming the field for any other value, so that no setting is silently
    ignored. Returns a decorator (it sets ``obj.recipe_fixed``, merged with an inherited one)::

        @fixed_fields(label_smoothing=(0.0, "plain cross-entropy, as the official code"))
        def compute_loss(model, batch): ...
    """
    def mark(obj):
        obj.recipe_fixed = {**getattr(obj, "recipe_fixed", {}), **fields}
        return obj

    return mark


@dataclass
class Recipe:
    """One model's training defaults.

    Fields:
        name: the CLI name (``reidkern train NAME``).
        task: ``"image"`` (single-modality image ReID), ``"visible-infrared"``, ``"text-image"``
            or ``"uda"`` (unsupervised domain adaptation).
        build_model: ``build_model(num_classes, **kwargs) -> nn.Module``.
        compute_loss: ``compute_loss(model, batch) -> (loss, logs)``: the scalar loss to
            back-propagate and a dict of floats to log; ``model`` is in train mode.
        extract: ``extract(model, batch) -> [B, D] features`` (eval mode, no grad); the features
            the paper evaluates.
        height, width: input size in pixels.
        num_instances, batch_size: the P×K sampler's K and P·K.
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"``; ``lr``, ``weight_decay``, ``momentum``.
        param_groups: ``param_groups(model, lr) -> list of optimizer groups`` (own lrs per part).
        epochs, scheduler (``"step"`` | ``"cosine"``), milestones (epochs), gamma, warmup_epochs,
            warmup_factor: the learning-rate schedule, built from torch.optim.lr_scheduler.
            ``momentum`` (SGD only), ``milestones`` (step schedule only), ``gamma`` (step schedule
            with milestones) and ``warmup_factor`` (``warmup_epochs > 0`` only) are refused with
            a ValueError naming the field under a setting that ignores them, unless they hold the
            recipe's own value; so is ``rerank_grid`` without ``rerank``, a validation split
            (``val_ids``) and the image-ReID protocol. A recipe's own values are those it is
            constructed with, so a construction compares them with the field defaults
            (``Recipe(optimizer="adam", momentum=0.5, ...)`` raises) and every later
            ``dataclasses.replace`` / ``get_recipe`` override with them.
        metric: distance used at test time (``"cosine"`` or ``"euclidean"``).
        hooks: extra engine hooks (layer freezing, EMA teacher, per-epoch pseudo-labels); a
            list of objects, or a callable ``hooks(model) -> list`` when a hook needs the model.
            The hook protocol is in :mod:`reidkern.engine.hooks` and docs/engine.md.
        model_kwargs: extra keywords for ``build_model``.

    Engine fields (all optional; see docs/engine.md):
        train_sampler: ``train_sampler(records, batch_size, num_instances, seed) -> sampler``
            of indices into ``records``; None = the P×K ``RandomIdentitySampler`` (its distributed
            form under torchrun). Visible–infrared recipes pass ``VisibleInfraredSampler``.
        build_dataset: ``build_dataset(records, transform) -> torch Dataset`` yielding batch-dict
            items; None = ``reidkern.data.ImageDataset`` (text-image recipes add captions here).
        build_transforms: ``build_transforms(height, width, train) -> callable``; None =
            ``reidkern.data.build_transforms``.
        evaluate: ``evaluate(model, recipe, query, gallery, features=...) -> dict`` of metrics
            (``mAP`` first) for tasks whose protocol is not single-query image ReID; None = the
            Market protocol on ``extract`` features (cosine/euclidean per ``metric``).
        clip_grad_norm: max gradient L2 norm (None: no clipping).
        label_smoothing: ε of label-smoothed cross entropy, in [0, 1). A built-in recipe either
            applies it (its ``compute_loss`` or ``build_model`` has ``with_label_smoothing(ε)``,
            called on every construction and override, so ``get_recipe(name,
            label_smoothing=ε)`` reaches the loss) or refuses values other than its own with a
            ValueError (a part marked by :func:`fixed_fields`). A custom ``compute_loss`` without
            ``with_label_smoothing`` must read ``recipe.label_smoothing`` itself.
        flip_test: average the features of each image and its mirror at test time.
        rerank: k-reciprocal re-ranking at test time, with ``rerank_params``.
        rerank_params: ``(k1, k2, lambda_value)`` of the re-ranking (Zhong et al., CVPR 2017;
            their Market-1501 setting (20, 6, 0.3) by default).
        rerank_grid: candidate ``(k1, k2, lambda_value)`` triples; when given and the run has a
            validation split, ``reidkern.engine.run.train`` re-ranks with the triple of best
            validation mAP (for the model before training and for the tested checkpoint alike),
            never choosing on the test set. The best k1 grows with the gallery images per identity
            (Market-1501: ~20 per id; Con-ReID: ~90), which is why it is chosen, not fixed.
        val_ids: identities carved from the training split for validation (best checkpoint);
            0 = no validation (the last checkpoint is kept). ``run.train`` refuses a carved split
            that cannot choose (``run.check_validation_split``) rather than keep the last one.
        seed: base seed of sampling, augmentation and initialisation.
        channels_last: run the model in channels-last memory format (measured 3x faster forward
            and ~1.3x faster training step for OSNet on a 2-core AVX CPU).
        onnx_eval: on CPU, extract test features with onnxruntime running the exported inference
            path (checked equal to PyTorch first; ~10x faster than eager OSNet here).
        precise_bn: before each test-split evaluation of ``reidkern.engine.run.train`` (the
            model before training and the tested checkpoint), re-estimate every BatchNorm's
            running statistics as the plain average over this many training batches (fast-reid's
            PreciseBN; ``torch.optim.swa_utils.update_bn``). 0 (default) = off: the running
            averages of training are used. A randomly initialised model's running statistics are
            still their initial 0 / 1, so without it the "before" score is that of another
            network (every BatchNorm an identity) than the one training changes.
    """

    name: str
    task: str
    build_model: Callable[..., nn.Module]
    compute_loss: LossFn
    extract: ExtractFn
    height: int = 256
    width: int = 128
    num_instances: int = 4
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    momentum: float = 0.9
    param_groups: Callable[[nn.Module, float], List[Dict[str, Any]]] = _all_parameters
    epochs: int = 120
    scheduler: str = "step"
    milestones: Tuple[int, ...] = (40, 70)
    gamma: float = 0.1
    warmup_epochs: float = 10
    warmup_factor: float = 0.01
    metric: str = "cosine"
    hooks: Any = field(default_factory=list)
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    # Engine fields (additive; defaults keep the image-ReID path).
    train_sampler: Optional[Callable[..., Any]] = None
    build_dataset: Optional[Callable[..., Any]] = None
    build_transforms: Optional[Callable[..., Any]] = None
    evaluate: Optional[Callable[..., Dict[str, float]]] = None
    clip_grad_norm: Optional[float] = None
    label_smoothing: float = 0.1
    flip_test: bool = True
    rerank: bool = False
    rerank_params: Tuple[int, int, float] = (20, 6, 0.3)
    rerank_grid: Optional[Tuple[Tuple[int, int, float], ...]] = None
    val_ids: int = 8
    seed: int = 0
    channels_last: bool = False
    onnx_eval: bool = False
    precise_bn: int = 0
    # The values of _MODE_FIELDS the recipe was constructed with (its own defaults): filled by
    # __post_init__ and carried by dataclasses.replace. Not a setting (get_recipe refuses it).
    _defaults: Optional[Dict[str, Any]] = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Runs on construction and on every dataclasses.replace (get_recipe's overrides): the
        # label smoothing is bound into the parts that read it, and fields a part does not read
        # are refused unless they hold the part's own value.
        eps = check_label_smoothing(self.label_smoothing)
        for part in _SMOOTHING_PARTS:
            fn = getattr(self, part)
            rebind = getattr(fn, "with_label_smoothing", None)
            if rebind is not None and getattr(fn, "label_smoothing", None) != eps:
                setattr(self, part, rebind(float(eps)))
        for part in _PARTS:
            for name, (accepted, why) in getattr(getattr(self, part), "recipe_fixed", {}).items():
                value = getattr(self, name)
                if value != accepted:
                    raise ValueError(f"{name}: the {self.name!r} recipe does not read it ({part}: {why}); "
                                     f"expected {accepted!r}, got {value!r}")
        check_choice(self.optimizer, OPTIMIZERS, "optimizer")
        check_choice(self.scheduler, SCHEDULERS, "scheduler")
        # Settings read only under another setting (momentum with SGD, milestones/gamma with the
        # step schedule, warmup_factor with a warm-up, rerank_grid with re-ranking on a validation
        # split): a value other than the recipe's own under a setting that ignores it is refused.
        # A construction (no _defaults yet) compares with the field defaults, so the values it
        # declares as the recipe's own never contradict each other; a replace compares with them.
        constructed = self._defaults is None
        own_values = _FIELD_DEFAULTS if constructed else self._defaults
        for name in _MODE_FIELDS:
            value, own = getattr(self, name), own_values.get(name)
            if _plain(value) == _plain(own):
                continue
            why = _why_no_effect(self, name)
            if why is not None:
                whose = "the field's default" if constructed else f"the {self.name!r} recipe's own value"
                raise ValueError(f"{name}: {value!r} has no effect {why}; {whose} {own!r} is the only "
                                 f"one accepted there")
        if constructed:
            self._defaults = {name: getattr(self, name) for name in _MODE_FIELDS}


# What a construction compares the _MODE_FIELDS with (see __post_init__).
_FIELD_DEFAULTS = {f.name: f.default for f in fields(Recipe) if f.name in _MODE_FIELDS}

_RECIPES: Dict[str, Callable[[], Recipe]] = {}


def register_recipe(name: str):
    """Decorator: register a zero-argument factory returning a ``Recipe`` under ``name``."""

    def wrap(factory: Callable[[], Recipe]) -> Callable[[], Recipe]:
        if name in _RECIPES:
            raise ValueError(f"name: recipe {name!r} is registered twice")
        _RECIPES[name] = factory
        return factory

    return wrap


def recipe_names() -> List[str]:
    """Names of the registered recipes, sorted."""
    from . import recipes  # noqa: F401  (registers the built-in recipes)

    return sorted(_RECIPES)


def get_recipe(name: str, **overrides: Any) -> Recipe:
    """The recipe registered as ``name``, with fields replaced by ``overrides``.

    Raises:
        ValueError: unknown ``name`` (the message lists the known ones), an unknown field, or a
            field the recipe does not read set to another value than its own (the message names
            the field and the part that ignores it; see :func:`fixed_fields`).
    """
    from dataclasses import replace

    names = recipe_names()
    if name not in _RECIPES:
        raise ValueError(f"model: unknown recipe {name!r}; known: {', '.join(names) or 'none'}")
    recipe = _RECIPES[name]()
    known = {f.name for f in fields(Recipe) if not f.name.startswith("_")}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValueError(f"overrides: unknown recipe field(s) {bad}; known: {sorted(known)}")
    return replace(recipe, **overrides) if overrides else recipe
