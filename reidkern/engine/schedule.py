"""Optimizer and learning-rate schedule of a recipe, from torch's own parts.

The schedule is stepped once per iteration. A recipe states it in epochs over ``recipe.epochs``
(warm-up, milestones); a run of another length (``--epochs N`` or ``--steps N``) gets the same
shape stretched to its length: recipe epoch ``e`` ↦ step ``round(e / recipe.epochs · total_steps)``.
Warm-up is ``LinearLR`` from ``warmup_factor · lr`` to ``lr`` (Luo et al., "Bag of Tricks", 2019:
10 epochs from 3.5e-6 to 3.5e-4), then ``MultiStepLR`` (``"step"``) or ``CosineAnnealingLR`` to 0
(``"cosine"``), chained by ``SequentialLR``.
"""
from __future__ import annotations

import warnings
from typing import Dict, List

import torch
from torch.optim import lr_scheduler

__all__ = ["build_optimizer", "build_scheduler", "scale_lr", "to_steps"]

OPTIMIZERS = ("adam", "adamw", "sgd")  # recipe.optimizer (any case)
SCHEDULERS = ("step", "cosine")  # recipe.scheduler (any case)


def check_choice(value, choices, name: str) -> str:
    """``value`` lower-cased when it is one of ``choices`` (e.g. :data:`OPTIMIZERS`), else a
    ValueError naming ``name`` and the choices."""
    if str(value).lower() not in choices:
        listed = ", ".join(repr(c) for c in choices[:-1]) + f" or {choices[-1]!r}"
        raise ValueError(f"{name}: expected {listed}, got {value!r}")
    return str(value).lower()


def build_optimizer(recipe, model: torch.nn.Module) -> torch.optim.Optimizer:
    """``recipe.optimizer`` over ``recipe.param_groups(model, recipe.lr)``.

    Every group keeps its own ``lr`` (and ``weight_decay`` when given). Frozen parameters may be in
    a group: optimizers skip parameters whose ``.grad`` is None, so a freezing schedule only flips
    ``requires_grad``.

    Raises:
        ValueError: unknown ``recipe.optimizer``, or groups that hold no parameter.
    """
    groups = recipe.param_groups(model, recipe.lr)
    if not groups or not any(len(list(g["params"])) for g in groups):
        raise ValueError(f"param_groups: recipe {recipe.name!r} gave no parameter to optimise")
    name = check_choice(recipe.optimizer, OPTIMIZERS, "optimizer")
    if name == "adam":
        return torch.optim.Adam(groups, lr=recipe.lr, weight_decay=recipe.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(groups, lr=recipe.lr, weight_decay=recipe.weight_decay,
                           momentum=recipe.momentum, nesterov=recipe.momentum > 0)


def to_steps(epoch: float, recipe_epochs: int, total_steps: int) -> int:
    """Step of recipe epoch ``epoch`` once the recipe's run is stretched to ``total_steps``."""
    return int(round(epoch / max(recipe_epochs, 1) * total_steps))


def _vanished_settings(recipe, total_steps: int, wanted_warm: int, warm: int) -> List[str]:
    """Why a warm-up or milestone of ``recipe`` has no effect once stretched to ``total_steps``
    (a short run: ``--steps N``); one message per setting, naming the field and the value.
    ``wanted_warm``: the warm-up's steps at that stretch; ``warm``: the steps it gets (the run
    keeps at least one step after it)."""
    run = f"of the recipe's {recipe.epochs} epochs"
    out = []
    if recipe.warmup_epochs > 0 and warm == 0:
        out.append(f"warmup_epochs: {recipe.warmup_epochs} {run} rounds to 0 of this run's {total_steps} "
                   f"steps: no warm-up, the run starts at the full lr")
    elif wanted_warm > warm:
        out.append(f"warmup_epochs: {recipe.warmup_epochs} {run} is longer than this run's {total_steps} steps: "
                   f"the warm-up is cut to {warm} steps and the schedule after it has 1 step")
    if recipe.scheduler.lower() != "step":
        return out
    at: Dict[int, List] = {}
    for m in recipe.milestones:
        at.setdefault(to_steps(m, recipe.epochs, total_steps), []).append(m)
    lost = f"the lr is never multiplied by gamma={recipe.gamma} there"
    for step, ms in sorted(at.items()):
        name = f"milestones: {ms[0]} {run} maps to step {step}"
        if step >= total_steps:
            out.append(f"{name}, but this run's last step is {total_steps - 1}, so {lost}")
        elif step <= warm:
            where = f"within this run's {warm}-step warm-up" if warm else "of this run"
            out.append(f"{name} {where}, where the step schedule drops it, so {lost}")
        elif len(ms) > 1:
            out.append(f"milestones: {ms} {run} all map to step {step} of this run's {total_steps} steps: the lr "
                       f"is multiplied by gamma={recipe.gamma} once there, not {len(ms)} times")
    return out


def build_scheduler(recipe, optimizer: torch.optim.Optimizer, total_steps: int):
    """Per-iteration warm-up + step/cosine schedule over ``total_steps`` (see module doc).

    Warns (UserWarning naming the field and the value) when stretching to ``total_steps`` makes a
    setting vanish: a warm-up that rounds to 0 steps or is cut to fit the run; a milestone at or after the last step, at
    step 0 or within the warm-up (dropped), or sharing its step with another (one decay, not two).

    Raises:
        ValueError: ``total_steps`` < 1, unknown ``recipe.scheduler``, or a warm-up factor
            outside (0, 1].
    """
    if total_steps < 1:
        raise ValueError(f"total_steps: expected >= 1, got {total_steps}")
    if not 0 < recipe.warmup_factor <= 1:
        raise ValueError(f"warmup_factor: expected in (0, 1], got {recipe.warmup_factor}")
    wanted_warm = to_steps(recipe.warmup_epochs, recipe.epochs, total_steps)
    warm = min(wanted_warm, total_steps - 1)
    rest = total_steps - warm
    kind = check_choice(recipe.scheduler, SCHEDULERS, "scheduler")
    for message in _vanished_settings(recipe, total_steps, wanted_warm, warm):
        warnings.warn(message, stacklevel=2)
    if kind == "step":
        ms: List[int] = sorted({to_steps(m, recipe.epochs, total_steps) - warm for m in recipe.milestones})
        main = lr_scheduler.MultiStepLR(optimizer, [m for m in ms if m > 0] or [total_steps + 1],
                                        gamma=recipe.gamma)
    else:  # cosine
        main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(rest, 1), eta_min=0.0)
    if warm <= 0:
        return main
    warmup = lr_scheduler.LinearLR(optimizer, start_factor=recipe.warmup_factor, end_factor=1.0,
                                   total_iters=warm)
    return lr_scheduler.SequentialLR(optimizer, [warmup, main], milestones=[warm])


def scale_lr(optimizer: torch.optim.Optimizer, scheduler, factor: float, groups=None) -> None:
    """Multiply the learning rate of ``groups`` (indices; default all) by ``factor`` for the rest
    of the run, schedule included (LA-Transformer's ×0.8 at each unfreezing step): the current lr,
    the groups' ``initial_lr`` and every scheduler's ``base_lrs`` are scaled together, so the
    chained schedulers keep the same shape at the new scale."""
    idx = range(len(optimizer.param_groups)) if groups is None else groups
    for i in idx:
        g = optimizer.param_groups[i]
        g["lr"] *= factor
        if "initial_lr" in g:
            g["initial_lr"] *= factor
    scheds = [scheduler] + list(getattr(scheduler, "_schedulers", []))
    for s in scheds:
        if s is not None and hasattr(s, "base_lrs"):
            for i in idx:
                s.base_lrs[i] *= factor
        if s is not None and hasattr(s, "_last_lr"):
            s._last_lr = [g["lr"] for g in optimizer.param_groups]
