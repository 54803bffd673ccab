"""The training loop: one step on one screen, over torch's own parts.

``Trainer.train_step`` is the whole step — autocast forward and loss, backward through the
GradScaler (fp16) or plainly (fp32/bf16), optional gradient clipping, optimizer step, one
scheduler step. ``Trainer.fit`` runs steps over the epochs of a loader, calls the hooks, logs
one JSON line per ``log_every`` steps, validates, and writes checkpoints (atomically, see
:mod:`reidkern.engine.checkpoint`). Under ``torchrun`` the model is wrapped in
``DistributedDataParallel``; only rank 0 writes files and shows the progress bar.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Callable, Dict, Iterable, List, Optional

import torch
from torch import nn

from . import checkpoint as ckpt_io
from .hooks import call_hooks
from .schedule import build_optimizer, build_scheduler

__all__ = ["Trainer", "unwrap", "amp_dtype"]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` (or ``torch.compile``) wrapper."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None or not isinstance(inner, nn.Module):
            return model
        model = inner


def amp_dtype(amp) -> Optional[torch.dtype]:
    """``None``/``False`` → None (float32); ``True``/``"bf16"`` → bfloat16; ``"fp16"`` → float16.

    Raises ValueError for anything else."""
    if amp in (None, False, "", "none", "fp32"):
        return None
    if amp in (True, "bf16", "bfloat16", torch.bfloat16):
        return torch.bfloat16
    if amp in ("fp16", "float16", torch.float16):
        return torch.float16
    raise ValueError(f"amp: expected None, 'bf16' or 'fp16', got {amp!r}")


def _distributed():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _to_device(batch: Dict[str, Any], device: torch.device, channels_last: bool = False) -> Dict[str, Any]:
    nb = device.type == "cuda"
    out = {k: (v.to(device, non_blocking=nb) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    if channels_last and isinstance(out.get("img"), torch.Tensor) and out["img"].dim() == 4:
        out["img"] = out["img"].contiguous(memory_format=torch.channels_last)
    return out


class Trainer:
    """Trains ``model`` with ``recipe`` on the batches of ``loader``.

    Args:
        recipe: a :class:`reidkern.engine.Recipe` (compute_loss, optimizer, schedule, clipping).
        model: the model (moved to ``device``; wrapped in DDP when a process group is active).
        loader: an object with ``steps_per_epoch`` and ``epoch(epoch, skip) -> iterable of batch
            dicts`` giving the batches of ``epoch`` after the first ``skip`` (see
            :class:`reidkern.engine.loader.TrainLoader`); batches are this process's share.
        total_steps: optimiser steps of the whole run (the schedule is stretched to it).
        out_dir: folder for ``last.pt``, ``best.pt``, ``metrics.jsonl`` (None: write nothing).
        device: torch device (default CUDA when available, else CPU).
        amp: None (float32), ``"bf16"`` or ``"fp16"`` (``torch.autocast``; fp16 adds a GradScaler).
        hooks: hook objects (see :mod:`reidkern.engine.hooks`), called in order; recipe hooks first.
        validate: ``validate(trainer) -> dict`` with ``"mAP"``, called at the end of every
            ``eval_every`` epochs and at the end of the run; the best value selects ``best.pt``.
        checkpoint_every: also write ``last.pt`` every this many steps (default: at epoch ends and
            at the end only).
        log_every: steps between metrics-log lines / progress-bar updates.
        max_epochs: stop at the end of this epoch count even if ``total_steps`` is not reached.

    Raises:
        ValueError: ``total_steps`` < 1, a bad ``amp``, an out_dir that is a file.
        FloatingPointError: a non-finite loss (the step is not applied).
    """

    def __init__(self, recipe, model: nn.Module, loader, total_steps: int, *, out_dir: Optional[str] = None,
                 device=None, amp=None, hooks: Iterable = (), validate: Optional[Callable] = None,
                 eval_every: int = 1, checkpoint_every: Optional[int] = None, log_every: int = 1,
                 max_epochs: Optional[int] = None, progress: bool = True, dataset=None,
                 meta: Optional[dict] = None):
        if not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps: expected a positive int, got {total_steps!r}")
        self.recipe, self.loader, self.dataset = recipe, loader, dataset
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.amp_dtype = amp_dtype(amp)
        self.rank, self.world_size = _distributed()
        self.channels_last = bool(getattr(recipe, "channels_last", False))
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.net = self.model
        self._ddp_trainable = None  # names of the parameters the DDP wrapper was built over
        self._wrap_ddp()
        self.optimizer = build_optimizer(recipe, self.model)
        self.scheduler = build_scheduler(recipe, self.optimizer, total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.hooks: List[Any] = list(hooks)
        self.total_steps, self.max_epochs = total_steps, max_epochs
        self.steps_per_epoch = loader.steps_per_epoch
        self.validate_fn, self.eval_every = validate, max(1, eval_every)
        self.checkpoint_every, self.log_every = checkpoint_every, max(1, log_every)
        self.progress = progress and self.rank == 0
        self.out_dir = out_dir
        self.meta = dict(meta or {})
        self.epoch = self.step = self.step_in_epoch = 0
        self.best: Optional[dict] = None
        self.history: List[dict] = []
        self._rng_to_restore = None
        self._last_val: Optional[dict] = None
        if out_dir is not None and self.rank == 0:
            if os.path.exists(out_dir) and not os.path.isdir(out_dir):
                raise ValueError(f"out_dir: {out_dir!r} exists and is not a folder")
            os.makedirs(out_dir, exist_ok=True)

    # ----------------------------------------------------------------- one step
    def train_step(self, batch: Dict[str, Any]) -> Dict[str, float]:
        """Forward, loss, backward, (clip), optimizer and scheduler step. Returns the logs."""
        self.net.train()
        batch = _to_device(batch, self.device, self.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            loss, logs = self.recipe.compute_loss(self.net, batch)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"loss is {value} at step {self.step} (epoch {self.epoch}); "
                                     "lower the lr, enable gradient clipping or use amp='bf16'")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.recipe.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return {"loss": value, **{k: float(v) for k, v in (logs or {}).items()}}

    # ----------------------------------------------------------------- the loop
    def _wrap_ddp(self) -> None:
        """Under torchrun, (re)build the ``DistributedDataParallel`` wrapper when the set of
        trainable parameters changed: DDP all-reduces exactly the parameters that required
        gradients when it was built, so a freezing hook that freezes (or later releases) layers
        needs a wrapper built after it acted — else DDP waits for gradients that never come, or
        silently leaves released layers unsynchronised across processes."""
        if self.world_size <= 1:
            return
        trainable = tuple(n for n, p in self.model.named_parameters() if p.requires_grad)
        if trainable == self._ddp_trainable:
            return
        from torch.nn.parallel import DistributedDataParallel as DDP
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.net = DDP(self.model, device_ids=ids)
        self._ddp_trainable = trainable

    def fit(self) -> List[dict]:
        """Run until ``total_steps`` (or ``max_epochs``); returns the logged step records.

        Ctrl-C (KeyboardInterrupt) propagates after the progress bar is closed; the last complete
        checkpoint stays as it was (checkpoints are only ever replaced atomically)."""
        from tqdm.auto import tqdm

        call_hooks(self.hooks, "on_train_start", self)
        self._wrap_ddp()
        if self._rng_to_restore is not None:
            ckpt_io.set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
        bar = tqdm(total=self.total_steps, initial=self.step, desc=f"train {self.recipe.name}",
                   unit="step", disable=not self.progress, dynamic_ncols=True)
        per_step = self.loader.batch_size * self.world_size
        t_last, rate = time.perf_counter(), None
        try:
            while self.step < self.total_steps and (self.max_epochs is None or self.epoch < self.max_epochs):
                if self.step_in_epoch == 0:
                    call_hooks(self.hooks, "on_epoch_start", self, self.epoch)
                    self._wrap_ddp()
                for batch in self.loader.epoch(self.epoch, skip=self.step_in_epoch):
                    out = self.train_step(batch)
                    self.step += 1
                    self.step_in_epoch += 1
                    call_hooks(self.hooks, "after_step", self, self.step, out)
                    now = time.perf_counter()
                    inst = per_step / max(now - t_last, 1e-9)
                    rate = inst if rate is None else 0.9 * rate + 0.1 * inst
                    t_last = now
                    if self.step % self.log_every == 0 or self.step == self.total_steps:
                        rec = {"step": self.step, "epoch": self.epoch, **self._reduce(out),
                               "lr": self.optimizer.param_groups[0]["lr"], "img_s": round(rate, 2)}
                        self.log(rec)
                        bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}",
                                        img_s=f"{rate:.1f}", refresh=False)
                    bar.update(1)
                    if self.checkpoint_every and self.step % self.checkpoint_every == 0:
                        self.save("last.pt")
                    if self.step >= self.total_steps:
                        break
                if self.step_in_epoch >= self.loader.steps_in(self.epoch):
                    self._end_epoch()
                elif self.step >= self.total_steps:
                    break
            if self._last_val is None or self._last_val.get("step") != self.step:
                self._validate()
            self.save("last.pt")
        finally:
            bar.close()
        return self.history

    def _end_epoch(self) -> None:
        call_hooks(self.hooks, "on_epoch_end", self, self.epoch)
        self.epoch += 1
        self.step_in_epoch = 0
        if self.validate_fn is not None and self.epoch % self.eval_every == 0:
            self._validate()
        self.save("last.pt")

    def _validate(self) -> None:
        if self.validate_fn is None:
            return
        res = dict(self.validate_fn(self))
        self._last_val = {"step": self.step, **res}
        self.log({"step": self.step, "epoch": self.epoch, **{f"val_{k}": v for k, v in res.items()}})
        value = float(res["mAP"])
        if self.best is None or value > self.best["value"]:
            self.best = {"metric": "mAP", "value": value, "step": self.step, "epoch": self.epoch}
            self.save("best.pt")

    def _reduce(self, out: Dict[str, float]) -> Dict[str, float]:
        """Mean of the logged values over processes (each logs its share of the global batch)."""
        if self.world_size == 1:
            return out
        import torch.distributed as dist
        keys = sorted(out)
        t = torch.tensor([out[k] for k in keys], dtype=torch.float64,
                         device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return {k: float(v) / self.world_size for k, v in zip(keys, t.tolist())}

    # ----------------------------------------------------------------- logging / state
    def log(self, record: Dict[str, Any]) -> None:
        """Append ``record`` to the history and (rank 0) as one JSON line to metrics.jsonl."""
        self.history.append(record)
        if self.out_dir is not None and self.rank == 0:
            with open(os.path.join(self.out_dir, "metrics.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")

    def state(self) -> Dict[str, Any]:
        """Everything a bit-exact resume needs (see :mod:`reidkern.engine.checkpoint`)."""
        return dict(
            recipe=self.recipe.name, num_classes=self.meta.get("num_classes"),
            model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
            rng=ckpt_io.rng_state(), epoch=self.epoch, step=self.step, step_in_epoch=self.step_in_epoch,
            total_steps=self.total_steps,
            hooks=[h.state_dict() if hasattr(h, "state_dict") else None for h in self.hooks],
            best=self.best, meta=self.meta,
        )

    def save(self, name: str) -> Optional[str]:
        """Write checkpoint ``out_dir/name`` atomically (rank 0; no-op without out_dir)."""
        if self.out_dir is None or self.rank != 0:
            return None
        path = os.path.join(self.out_dir, name)
        ckpt_io.save_checkpoint(path, **self.state())
        return path

    def load(self, path: str) -> None:
        """Resume from checkpoint ``path``: model, optimizer, scheduler, scaler, hooks, counters;
        RNG states are restored when ``fit`` starts (after hooks' on_train_start).

        Raises:
            FileNotFoundError / ValueError: see :func:`reidkern.engine.checkpoint.load_checkpoint`;
                ValueError also for a checkpoint of another model or another run length.
        """
        c = ckpt_io.load_checkpoint(path, recipe=self.recipe.name, map_location=self.device)
        ckpt_io.model_state_from_checkpoint(self.model, c, path)
        if c.get("total_steps") != self.total_steps:
            raise ValueError(f"checkpoint {path!r} belongs to a run of {c.get('total_steps')} steps, "
                             f"this run has {self.total_steps}: pass the same --steps/--epochs to resume")
        self.optimizer.load_state_dict(c["optimizer"])
        self.scheduler.load_state_dict(c["scheduler"])
        if c.get("scaler") is not None and self.scaler.is_enabled():
            self.scaler.load_state_dict(c["scaler"])
        hooks = c.get("hooks") or []
        if len(hooks) != len(self.hooks):
            raise ValueError(f"checkpoint {path!r} has {len(hooks)} hook states, this run has "
                             f"{len(self.hooks)} hooks")
        for h, s in zip(self.hooks, hooks):
            if s is not None and hasattr(h, "load_state_dict"):
                h.load_state_dict(s)
        self.epoch, self.step, self.step_in_epoch = int(c["epoch"]), int(c["step"]), int(c["step_in_epoch"])
        self.best = c.get("best")
        self._rng_to_restore = c["rng"]
