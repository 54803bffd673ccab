"""Engine hooks: small objects the training loop calls at fixed points.

Protocol — every method is optional; the trainer calls what a hook defines:

    on_train_start(trainer)            once, after a resume was loaded, before the first step
    on_epoch_start(trainer, epoch)     before the first step of each epoch (also when a resumed run
                                       continues in the middle of an epoch? no: only at epoch starts)
    after_step(trainer, step, out)     after each optimiser step; ``step`` counts completed steps
                                       (1 after the first); ``out`` = {"loss": float, **recipe logs}
    on_epoch_end(trainer, epoch)       after the last step of each epoch (before validation)
    state_dict() / load_state_dict(d)  what the hook must carry across a resume (saved in every
                                       checkpoint, restored before on_train_start)

``trainer`` exposes ``model`` (unwrapped), ``optimizer``, ``scheduler``, ``epoch``, ``step``,
``total_steps``, ``steps_per_epoch``, ``device``, ``recipe``, ``dataset`` (may be None) and
``log(dict)`` (adds entries to the metrics log).
"""
from __future__ import annotations

import copy
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch
from torch import nn

__all__ = ["FreezeSchedule", "EMATeacher", "EpochHook", "call_hooks"]


def call_hooks(hooks: Iterable, name: str, *args) -> None:
    """Call ``hook.<name>(*args)`` on every hook that defines it, in order."""
    for h in hooks:
        fn = getattr(h, name, None)
        if fn is not None:
            fn(*args)


def _params_under(model: nn.Module, prefixes: Sequence[str]) -> List[nn.Parameter]:
    out = [p for n, p in model.named_parameters() if any(n == q or n.startswith(q + ".") for q in prefixes)]
    return out


class FreezeSchedule:
    """Layer-freezing schedule: parameters under ``frozen`` start with ``requires_grad=False``;
    at the start of epoch ``e`` the prefixes ``unfreeze[e]`` are released, and (``lr_factor``)
    every learning rate is multiplied by ``lr_factor`` at each release.

    LA-Transformer (official code): all 12 blocks frozen, the last two released at epoch 0, then one
    more every 2 epochs, lr ×0.8 at each of these epochs — built by
    ``reidkern.engine.recipes.la_transformer.blockwise_unfreezing()``.

    Args:
        frozen: parameter-name prefixes frozen at the start (module paths, e.g. ``"backbone.blocks.3"``).
        unfreeze: {epoch: [prefixes]} released at the start of that epoch (0-based).
        lr_factor: lr multiplier applied at each release (1.0 = none).

    Raises:
        ValueError: a prefix that matches no parameter (at ``on_train_start``), a negative epoch.
    """

    def __init__(self, frozen: Sequence[str], unfreeze: Dict[int, Sequence[str]], lr_factor: float = 1.0):
        if any(int(e) < 0 for e in unfreeze):
            raise ValueError(f"unfreeze: epochs must be >= 0, got {sorted(unfreeze)}")
        if not lr_factor > 0:
            raise ValueError(f"lr_factor: expected > 0, got {lr_factor}")
        self.frozen = list(frozen)
        self.unfreeze = {int(e): list(p) for e, p in unfreeze.items()}
        self.lr_factor = float(lr_factor)
        self.released: List[int] = []

    @classmethod
    def blockwise(cls, blocks: Sequence[str], every: int = 2, per_step: int = 2, lr_factor: float = 0.8,
                  last_first: bool = True) -> "FreezeSchedule":
        """All ``blocks`` frozen; ``per_step`` more released every ``every`` epochs (the last
        blocks first when ``last_first``), lr × ``lr_factor`` at each release."""
        order = list(blocks)[::-1] if last_first else list(blocks)
        sched = {(i + 1) * every: order[i * per_step:(i + 1) * per_step]
                 for i in range((len(order) + per_step - 1) // per_step)}
        return cls(order, sched, lr_factor)

    def _set(self, model: nn.Module, prefixes: Sequence[str], flag: bool) -> None:
        for q in prefixes:
            ps = _params_under(model, [q])
            if not ps:
                raise ValueError(f"FreezeSchedule: prefix {q!r} matches no parameter of "
                                 f"{type(model).__name__}")
            for p in ps:
                p.requires_grad_(flag)

    def on_train_start(self, trainer) -> None:
        self._set(trainer.model, self.frozen, False)
        for e in self.released:  # a resumed run: re-apply releases already done (lr is in the state)
            self._set(trainer.model, self.unfreeze[e], True)

    def on_epoch_start(self, trainer, epoch: int) -> None:
        if epoch in self.unfreeze and epoch not in self.released:
            self._set(trainer.model, self.unfreeze[epoch], True)
            self.released.append(epoch)
            if self.lr_factor != 1.0:
                from .schedule import scale_lr
                scale_lr(trainer.optimizer, trainer.scheduler, self.lr_factor)

    def state_dict(self) -> dict:
        return {"released": list(self.released)}

    def load_state_dict(self, state: dict) -> None:
        self.released = [int(e) for e in state["released"]]


class EMATeacher:
    """Mean teacher: a copy of the model updated after every step as
    ``θ_t ← α θ_t + (1 − α) θ_s`` with ``α = min(1 − 1/(t + 1), alpha_max)``, ``t`` the number of
    updates so far (Tarvainen & Valpola 2017; MMT / LF2 official code: alpha_max 0.999).
    Buffers (BatchNorm running statistics) follow the same average when ``ema_buffers`` (MMT
    averages only parameters; its teacher's BN statistics are its own forward passes), else the
    teacher keeps its own.

    ``teacher`` (an eval-ready ``nn.Module``, no gradients) exists after ``on_train_start``.
    """

    def __init__(self, alpha_max: float = 0.999, ema_buffers: bool = False):
        if not 0.0 <= alpha_max < 1.0:
            raise ValueError(f"alpha_max: expected in [0, 1), got {alpha_max}")
        self.alpha_max = float(alpha_max)
        self.ema_buffers = ema_buffers
        self.teacher: Optional[nn.Module] = None
        self.t = 0
        self._pending: Optional[dict] = None

    def alpha(self, t: int) -> float:
        """α for update number ``t`` (0-based)."""
        return min(1.0 - 1.0 / (t + 1), self.alpha_max)

    def on_train_start(self, trainer) -> None:
        self.teacher = copy.deepcopy(trainer.model)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        if self._pending is not None:
            self.teacher.load_state_dict(self._pending)
            self._pending = None

    @torch.no_grad()
    def after_step(self, trainer, step: int, out) -> None:
        a = self.alpha(self.t)
        for pt, ps in zip(self.teacher.parameters(), trainer.model.parameters()):
            pt.mul_(a).add_(ps.detach(), alpha=1.0 - a)
        if self.ema_buffers:
            for bt, bs in zip(self.teacher.buffers(), trainer.model.buffers()):
                if bt.is_floating_point():
                    bt.mul_(a).add_(bs, alpha=1.0 - a)
                else:
                    bt.copy_(bs)
        self.t += 1

    def state_dict(self) -> dict:
        return {"t": self.t, "teacher": None if self.teacher is None else self.teacher.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.t = int(state["t"])
        if state["teacher"] is not None:
            if self.teacher is None:
                self._pending = state["teacher"]
            else:
                self.teacher.load_state_dict(state["teacher"])


class EpochHook:
    """Calls ``fn(trainer, epoch)`` at the start (``when="start"``: pseudo-labels of LF2/MMT are
    re-clustered before each epoch) or end of every ``every``-th epoch. Its own state, if any, goes
    through ``state_fn``/``load_fn`` (e.g. the current pseudo-labels)."""

    def __init__(self, fn: Callable, when: str = "start", every: int = 1,
                 state_fn: Optional[Callable[[], dict]] = None, load_fn: Optional[Callable[[dict], None]] = None):
        if when not in ("start", "end"):
            raise ValueError(f"when: expected 'start' or 'end', got {when!r}")
        if every < 1:
            raise ValueError(f"every: expected >= 1, got {every}")
        self.fn, self.when, self.every = fn, when, every
        self.state_fn, self.load_fn = state_fn, load_fn

    def on_epoch_start(self, trainer, epoch: int) -> None:
        if self.when == "start" and epoch % self.every == 0:
            self.fn(trainer, epoch)

    def on_epoch_end(self, trainer, epoch: int) -> None:
        if self.when == "end" and (epoch + 1) % self.every == 0:
            self.fn(trainer, epoch)

    def state_dict(self) -> dict:
        return self.state_fn() if self.state_fn else {}

    def load_state_dict(self, state: dict) -> None:
        if self.load_fn:
            self.load_fn(state)
