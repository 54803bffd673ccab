"""Training checkpoints: written atomically, read with clear errors.

A checkpoint is one ``torch.save`` file holding a dict::

    format      "reidkern-checkpoint", version 1
    recipe      recipe name; num_classes: the classifier size it was built with
    model       model state_dict
    optimizer, scheduler, scaler   their state_dicts (scaler: None without fp16 AMP)
    rng         torch / numpy / python RNG states (and CUDA's when present)
    epoch, step, step_in_epoch     where training stands (the next step to run)
    hooks       [state_dict() of each hook, in order]
    best        {"metric": name, "value": float, "step": int} of the validation selection
    meta        free-form run facts (dataset, total steps, world size, ...)

Writing goes to a temporary file in the same folder, flushed and fsync-ed, then ``os.replace``-d
over the target: a crash or Ctrl-C never leaves a half-written checkpoint under the real name.
Reading uses ``torch.load(weights_only=True)``: no pickled code runs.
"""
from __future__ import annotations

import os
import random
from typing import Any, Dict, Optional

import numpy as np
import torch

__all__ = ["FORMAT", "atomic_save", "save_checkpoint", "load_checkpoint", "rng_state",
           "set_rng_state", "model_state_from_checkpoint"]

FORMAT = "reidkern-checkpoint"
VERSION = 1


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save(obj)`` to ``path`` through :func:`reidkern.atomic.atomic_path` (temporary file
    in the same folder, fsync-ed, then ``os.replace``): the old file stays intact on any error."""
    from reidkern.atomic import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())


def rng_state() -> Dict[str, Any]:
    """The RNG states a bit-exact resume needs, as tensors/ints (readable with weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": _py_state_to_tensor(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _py_state_to_tensor(st):
    version, internal, gauss = st
    return {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss}


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str, **entries: Any) -> None:
    """Write a checkpoint dict (``format``/``version`` added) atomically to ``path``."""
    atomic_save({"format": FORMAT, "version": VERSION, **entries}, path)


def load_checkpoint(path: str, recipe: Optional[str] = None, map_location="cpu") -> Dict[str, Any]:
    """Read a reidkern checkpoint.

    Args:
        path: the file.
        recipe: when given, the recipe name the checkpoint must have been trained with.

    Raises:
        FileNotFoundError: ``path`` does not exist (or is a folder).
        ValueError: a file that torch cannot read (truncated, corrupt, not a torch file), a torch
            file that is not a reidkern checkpoint, or a checkpoint of another recipe — the
            message names the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist or is not a file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, random bytes, pickles with code
        raise ValueError(f"checkpoint {path!r} cannot be read (truncated or not a torch file): "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path!r} is not a reidkern training checkpoint "
                         f"(no format={FORMAT!r} entry); plain weights go to the model's load_weights")
    if recipe is not None and ckpt.get("recipe") != recipe:
        raise ValueError(f"checkpoint {path!r} was trained with recipe {ckpt.get('recipe')!r}, "
                         f"not {recipe!r}")
    return ckpt


def model_state_from_checkpoint(model: torch.nn.Module, ckpt: Dict[str, Any], path: str) -> None:
    """Load ``ckpt["model"]`` into ``model`` strictly; a key or shape mismatch raises ValueError
    naming ``path`` and the differing keys (e.g. a checkpoint of another model or class count)."""
    sd = ckpt["model"]
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or shapes:
        parts = []
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape differs", shapes)):
            if keys:
                more = f" ... ({len(keys) - 8} more)" if len(keys) > 8 else ""
                parts.append(f"{title}: {', '.join(keys[:8])}{more}")
        raise ValueError(f"checkpoint {path!r} does not fit model {type(model).__name__} "
                         f"({'; '.join(parts)})")
    model.load_state_dict(sd)
