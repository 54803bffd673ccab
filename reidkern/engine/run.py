"""``train`` and ``test``: a recipe, a dataset and a folder → a trained, evaluated model.

``train`` carves a validation split out of the training identities (``recipe.val_ids``;
``reidkern.data.carve_validation``), trains on the rest, picks ``best.pt`` by validation mAP,
and evaluates the test query/gallery **once**, at the end, with the best checkpoint (the last
one when there is no validation split). ``eval_before`` also scores the untrained (e.g.
pretrained) model on the test split first, for a before/after table. Output folder::

    config.json     the run's arguments and recipe fields
    metrics.jsonl   one JSON line per logged step / validation / test
    last.pt         last complete checkpoint (resume with ``resume=``)
    best.pt         best validation checkpoint
                    (with ``recipe.precise_bn``, the tested one of the two holds the re-estimated
                    BatchNorm statistics it was scored with)
    results.json    {"before": {...}, "after": {...}} test scores (fractions); with a recipe's
                    ``rerank_grid``, also ``rerank_before``/``rerank_after``: the (k1, k2, λ) chosen
                    on the validation split and every candidate's validation mAP
    query.npz, gallery.npz   the final test features (``reidkern eval`` / ``show-ranks`` input)
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Dict, Optional

import torch

from .evaluate import choose_rerank_params, evaluate_model
from .loader import TrainLoader
from .trainer import Trainer, _distributed, unwrap

__all__ = ["train", "test", "load_dataset", "build_model_for", "check_out_dir", "check_validation_split"]


def check_out_dir(out_dir: str, arg: str = "--out") -> str:
    """Create ``out_dir`` (parents too); ValueError naming ``arg`` when it is an existing file."""
    if out_dir is None:
        raise ValueError(f"{arg}: an output folder is required")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"{arg}: {out_dir!r} exists and is a file, not a folder")
    os.makedirs(out_dir, exist_ok=True)
    return out_dir


def load_dataset(recipe, name: str, root: str, **kwargs):
    """``reidkern.data.build_dataset(name, root)``, checked against the recipe's task.

    Raises:
        ValueError: a dataset of another task than the recipe's (e.g. a text-image recipe on an
            image-only dataset), naming both; the reader's own errors (missing folders...).
    """
    from reidkern.data import build_dataset

    if not os.path.isdir(root):
        raise FileNotFoundError(f"--data: dataset folder {root!r} does not exist")
    ds = build_dataset(name, root, **kwargs)
    if recipe.task == "text-image" and not any(getattr(r, "captions", ()) for r in ds.train[:50]):
        raise ValueError(f"--dataset: {name!r} has no captions; recipe {recipe.name!r} is a text-image model")
    if recipe.task == "visible-infrared" and len({r.modality for r in ds.train}) < 2:
        raise ValueError(f"--dataset: {name!r} has a single modality; recipe {recipe.name!r} is a "
                         "visible-infrared model")
    if recipe.task == "image" and len(ds.train) == 0:
        raise ValueError(f"--dataset: {name!r} at {root!r} has no training images")
    return ds


def build_model_for(recipe, num_classes: int) -> torch.nn.Module:
    """``recipe.build_model(num_classes, **recipe.model_kwargs)`` seeded by ``recipe.seed``."""
    torch.manual_seed(recipe.seed)
    return recipe.build_model(num_classes, **recipe.model_kwargs)


def _epoch_indices(recipe, records, batch_size: int) -> Callable[[int], list]:
    from reidkern.data import RandomIdentitySampler

    make = recipe.train_sampler or RandomIdentitySampler

    def indices(epoch: int) -> list:
        s = make(records, batch_size, recipe.num_instances, seed=recipe.seed)
        if hasattr(s, "set_epoch"):
            s.set_epoch(epoch)
        return list(iter(s))

    return indices


def _config(recipe, **run) -> Dict[str, Any]:
    fields = {}
    for f in dataclasses.fields(recipe):
        if f.name.startswith("_"):  # bookkeeping (Recipe._defaults), not a setting
            continue
        v = getattr(recipe, f.name)
        fields[f.name] = v if isinstance(v, (int, float, str, bool, type(None), list, tuple, dict)) else repr(v)
    return {"run": run, "recipe": json.loads(json.dumps(fields, default=repr))}


def _write_json(obj, path: str) -> None:
    from reidkern.atomic import atomic_open

    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2)


def check_validation_split(recipe, val_q, val_g) -> None:
    """ValueError naming ``val_ids`` when the carved validation split cannot choose the checkpoint:
    no query or no gallery image, or (image-ReID protocol) no query with a match in the gallery
    once same-camera images are dropped (held-out ids seen by one camera only). Testing the last
    checkpoint instead would silently answer another question than the one asked."""
    n = recipe.val_ids
    fix = "hold out other ids (another seed or val_ids) or set val_ids=0 to test the last checkpoint"
    if not val_q or not val_g:
        raise ValueError(f"val_ids: the {n} held-out ids leave {len(val_q)} validation query and {len(val_g)} "
                         f"gallery images, so validation cannot choose the checkpoint; {fix}")
    if recipe.evaluate is not None:  # a task protocol: its own matching rules
        return
    cams: Dict[int, set] = {}
    for r in val_g:
        cams.setdefault(r.pid, set()).add(r.camid)
    # Market protocol (reidkern.metrics.protocols): a gallery image of the query's pid counts unless
    # it shares the query's camera; camid -1 (no camera) always counts
    if not any(c - {q.camid} or -1 in c for q in val_q for c in [cams.get(q.pid, set())]):
        raise ValueError(f"val_ids: no query of the {n} held-out ids has a gallery image of its id from another "
                         f"camera ({len(val_q)} query, {len(val_g)} gallery images), so validation cannot "
                         f"choose the checkpoint; {fix}")


def train(recipe, dataset, out_dir: str, *, steps: Optional[int] = None, epochs: Optional[int] = None,
          amp=None, resume: Optional[str] = None, device=None, num_workers: int = 2,
          eval_before: bool = False, test_after: bool = True, checkpoint_every: Optional[int] = None,
          eval_every: int = 1, progress: bool = True, log: Callable[[str], None] = print,
          dataset_name: str = "") -> Dict[str, Any]:
    """Train ``recipe`` on ``dataset`` (``.train/.query/.gallery`` record lists) into ``out_dir``.

    Args:
        steps: total optimiser steps (>= 1); or ``epochs`` (>= 1); default ``recipe.epochs``.
            The recipe's schedule is stretched to the run's length (reidkern.engine.schedule).
        amp: None, ``"bf16"`` or ``"fp16"``.
        resume: a ``last.pt`` of the same recipe and run length to continue from.
        num_workers: DataLoader workers for training and extraction.
        eval_before: score the model on the test split before training too.
        test_after: score the best checkpoint on the test split at the end.

    Returns:
        ``{"before": scores or None, "after": scores or None, "best": {...}, "out_dir": ...}``.

    Raises:
        ValueError: ``steps``/``epochs`` < 1 or both given, a batch size that does not split into
            the processes' P×K batches, an ``out_dir`` that is a file, a validation split that
            cannot choose the checkpoint (:func:`check_validation_split`); the data layer's and the
            checkpoint loader's errors (naming the file).
    """
    for arg, v in (("--steps", steps), ("--epochs", epochs)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{arg}: expected a positive number of {arg[2:]}, got {v!r}")
    if steps is not None and epochs is not None:
        raise ValueError("--steps and --epochs: give one of them, not both")
    rank, world = _distributed()
    if rank == 0:
        check_out_dir(out_dir)
    if recipe.batch_size % world or (recipe.batch_size // world) % recipe.num_instances:
        raise ValueError(f"batch_size: {recipe.batch_size} does not split into {world} process(es) of "
                         f"P x K batches with K = {recipe.num_instances}")
    from reidkern.data import ImageDataset, build_transforms, carve_validation

    if recipe.val_ids:
        train_recs, val_q, val_g = carve_validation(dataset.train, recipe.val_ids, seed=recipe.seed)
        check_validation_split(recipe, val_q, val_g)
    else:
        train_recs, val_q, val_g = list(dataset.train), [], []
    num_classes = len({r.pid for r in train_recs})
    model = build_model_for(recipe, num_classes)
    tf = (recipe.build_transforms or build_transforms)(recipe.height, recipe.width, train=True)
    train_set = (recipe.build_dataset or ImageDataset)(train_recs, tf)
    per_rank = recipe.batch_size // world
    loader = TrainLoader(train_set, _epoch_indices(recipe, train_recs, per_rank), per_rank,
                         seed=recipe.seed, num_workers=num_workers)
    n_epochs = epochs if epochs is not None else recipe.epochs
    total = steps if steps is not None else n_epochs * loader.steps_per_epoch
    hooks = recipe.hooks(model) if callable(recipe.hooks) else list(recipe.hooks)
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def validate(tr: Trainer) -> Dict[str, float]:
        if tr.rank != 0:
            return {"mAP": float("-inf")}
        return evaluate_model(tr.model, recipe, val_q, val_g, device=dev, amp=amp, num_workers=num_workers,
                              progress=progress, rerank=False)

    meta = {"num_classes": num_classes, "dataset": dataset_name, "world_size": world,
            "train_images": len(train_recs), "val_query": len(val_q), "val_gallery": len(val_g)}
    trainer = Trainer(recipe, model, loader, total, out_dir=out_dir, device=dev, amp=amp, hooks=hooks,
                      validate=validate if val_q else None, eval_every=eval_every,
                      checkpoint_every=checkpoint_every, max_epochs=None if steps else n_epochs,
                      progress=progress, dataset=dataset, meta=meta)
    if rank == 0 and not resume:  # a fresh run into a used folder starts a fresh log
        for stale in ("metrics.jsonl", "best.pt", "results.json"):
            if os.path.exists(os.path.join(out_dir, stale)):
                os.remove(os.path.join(out_dir, stale))
    if rank == 0:
        _write_json(_config(recipe, steps=steps, epochs=epochs, total_steps=total, amp=amp, resume=resume,
                            **meta), os.path.join(out_dir, "config.json"))
    log(f"{recipe.name}: {len(train_recs)} training images of {num_classes} ids "
        f"({len(val_q)}+{len(val_g)} validation images of {recipe.val_ids} held-out ids), "
        f"{loader.steps_per_epoch} steps/epoch, {total} steps, batch {recipe.batch_size} "
        f"({recipe.batch_size // recipe.num_instances}x{recipe.num_instances}), {world} process(es), "
        f"{'AMP ' + str(amp) if amp else 'float32'} on {dev}")
    out: Dict[str, Any] = {"before": None, "after": None, "out_dir": out_dir}
    if resume:
        trainer.load(resume)
        log(f"resumed from {resume} at step {trainer.step} (epoch {trainer.epoch})")
    tune_rr = bool(recipe.rerank and recipe.rerank_grid and val_q and recipe.evaluate is None)

    def rerank_params(tag: str):
        """The recipe's re-ranking (k1, k2, λ), or the grid's best on validation for this model."""
        if not tune_rr:
            return None
        _, vq, vg = evaluate_model(trainer.model, recipe, val_q, val_g, device=dev, amp=amp,
                                   num_workers=num_workers, progress=False, rerank=False, return_features=True)
        try:
            params, scores = choose_rerank_params(recipe, vq, vg)
        except ValueError as e:  # a validation split too small for every k1 of the grid
            log(f"re-ranking ({tag}): {e}; using the recipe's rerank_params {tuple(recipe.rerank_params)}")
            return None
        out[f"rerank_{tag}"] = {"k1": params[0], "k2": params[1], "lambda_value": params[2],
                                "val_mAP": scores}
        log(f"re-ranking ({tag}): k1 {params[0]}, k2 {params[1]}, lambda {params[2]} "
            f"(best validation mAP {100 * scores[','.join(map(str, params))]:.1f} of {len(scores)} settings)")
        return params

    if eval_before and rank == 0 and trainer.step == 0:
        precise_bn(model, loader, recipe.precise_bn, dev)
        out["before"] = evaluate_model(model, recipe, dataset.query, dataset.gallery, device=dev, amp=amp,
                                       num_workers=num_workers, progress=progress, both=True,
                                       rerank_params=rerank_params("before"))
        trainer.log({"step": 0, **{f"test_before_{k}": v for k, v in out["before"].items()}})
        log("before: " + format_scores(out["before"]))
    trainer.fit()
    out["best"] = trainer.best
    if test_after and rank == 0:
        tested = os.path.join(out_dir, "last.pt")
        if trainer.best is not None and os.path.exists(os.path.join(out_dir, "best.pt")):
            from .checkpoint import load_checkpoint, model_state_from_checkpoint
            tested = best = os.path.join(out_dir, "best.pt")
            model_state_from_checkpoint(trainer.model, load_checkpoint(best, recipe.name), best)
            log(f"test: best validation checkpoint (step {trainer.best['step']}, "
                f"val mAP {100 * trainer.best['value']:.1f})")
        if recipe.precise_bn:
            precise_bn(trainer.model, loader, recipe.precise_bn, dev)
            # the tested checkpoint keeps the statistics it is scored with, so that `reidkern test`
            # and `extract` of it give these scores and features (fast-reid's PreciseBN, too,
            # changes the model it then saves)
            _store_model_state(trainer.model, tested, recipe.name)
        out["after"], qf, gf = evaluate_model(trainer.model, recipe, dataset.query, dataset.gallery,
                                              device=dev, amp=amp, num_workers=num_workers,
                                              progress=progress, both=True, return_features=True,
                                              rerank_params=rerank_params("after"))
        if recipe.evaluate is None:
            from .evaluate import save_npz
            save_npz(qf, dataset.query, os.path.join(out_dir, "query.npz"))
            save_npz(gf, dataset.gallery, os.path.join(out_dir, "gallery.npz"))
        trainer.log({"step": trainer.step, **{f"test_{k}": v for k, v in out["after"].items()}})
        log("after:  " + format_scores(out["after"]))
    if rank == 0:
        _write_json({k: v for k, v in out.items() if k != "out_dir"}, os.path.join(out_dir, "results.json"))
    return out


def _store_model_state(model: torch.nn.Module, path: str, recipe_name: str) -> None:
    """Replace the ``model`` entry of checkpoint ``path`` (if it exists) by ``model``'s state."""
    if not os.path.isfile(path):
        return
    from .checkpoint import atomic_save, load_checkpoint

    ckpt = load_checkpoint(path, recipe_name)
    ckpt["model"] = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    atomic_save(ckpt, path)


def precise_bn(model: torch.nn.Module, loader: TrainLoader, num_batches: int, device) -> None:
    """Re-estimate the BatchNorm running statistics of ``model`` as the plain average over the
    first ``num_batches`` batches of ``loader``'s first epoch (``recipe.precise_bn``; fast-reid's
    PreciseBN, through ``torch.optim.swa_utils.update_bn``: train-mode forwards without gradient,
    the momenta and the mode restored). Does nothing for ``num_batches`` = 0 or a model without
    BatchNorm. Raises ValueError for a negative or non-int ``num_batches``."""
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 0:
        raise ValueError(f"precise_bn: expected an int >= 0 (training batches), got {num_batches!r}")
    if num_batches == 0:
        return
    from torch.optim.swa_utils import update_bn

    def images():
        for i, batch in enumerate(loader.epoch(0)):
            if i >= num_batches:
                return
            yield batch["img"].to(device)

    update_bn(images(), unwrap(model))


def format_scores(s: Dict[str, float]) -> str:
    """``R1 97.6 mAP 83.4 mINP 40.6 | re-ranked R1 .. mAP ..`` (percent)."""
    if not s:
        return "-"
    txt = " ".join(f"{k} {100 * s[k]:.1f}" for k in ("R1", "R5", "mAP", "mINP") if k in s)
    if "rr_mAP" in s:
        txt += f" | re-ranked R1 {100 * s['rr_R1']:.1f} mAP {100 * s['rr_mAP']:.1f} mINP {100 * s['rr_mINP']:.1f}"
    return txt


def test(recipe, checkpoint: str, dataset, *, device=None, amp=None, num_workers: int = 2,
         progress: bool = True, rerank: Optional[bool] = None) -> Dict[str, float]:
    """Score a trained checkpoint of ``recipe`` on ``dataset``'s query/gallery.

    Raises:
        FileNotFoundError / ValueError: a missing, truncated or foreign checkpoint, or one of
            another recipe (naming the file).
    """
    from .checkpoint import load_checkpoint, model_state_from_checkpoint

    ckpt = load_checkpoint(checkpoint, recipe=recipe.name)
    num_classes = ckpt.get("num_classes")
    if not isinstance(num_classes, int):
        raise ValueError(f"checkpoint {checkpoint!r} does not record num_classes")
    model = build_model_for(recipe, num_classes)
    model_state_from_checkpoint(model, ckpt, checkpoint)
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(dev)
    both = rerank is None
    return evaluate_model(model, recipe, dataset.query, dataset.gallery, device=dev, amp=amp,
                          num_workers=num_workers, progress=progress, rerank=rerank, both=both)
