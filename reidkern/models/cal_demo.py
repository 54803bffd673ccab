"""CAL on real crops with an infrared stand-in: ``../shared/data/con-reid`` as a visible–infrared set.

No real infrared crops are at hand. Con-ReID's real multi-camera crops stand in for both modalities,
split by camera the way SYSU-MM01 splits its six cameras: cameras c1, c2, c4, c5 are "visible"
(the RGB crops as they are) and c3, c6 are "infrared", shown to the model as greyscale images with
the grey channel replicated three times (as VI-ReID channel augmentation turns a visible image into
a pseudo-infrared one: 0.299 R + 0.587 G + 0.114 B, PIL's "L"). Each identity thus has both
modalities, from different cameras. Identities with images of one modality only are dropped.

Test: the test identities' "infrared" images are the queries, their "visible" images the gallery
pool; each of ``num_trials`` trials draws one gallery image per identity and visible camera (SYSU's
single-shot all-search, AGW's seeded draws) and the SYSU-MM01 protocol code scores it (including its
rule that camera-3 queries skip camera-2 gallery images); the result is mean ± std over trials.

What this checks: the pipeline — two-stream backbone, DRM, TSAA, the losses and MatchDistill, the
VI sampler, the engine and the VI protocol — on real pedestrian images. It does **not** measure
cross-spectral accuracy: a greyscale RGB crop is not a thermal image.

    python -m reidkern.models.cal_demo [--data DIR] [--steps 30] [--batch 16] [--height 144 --width 72]
"""
from __future__ import annotations

import argparse
import json
import random
import time
from collections import defaultdict
from types import SimpleNamespace
from typing import Dict, Optional, Sequence

import torch
from PIL import Image

from reidkern.data.records import INFRARED, VISIBLE, Record

__all__ = ["GreyReplicate", "con_reid_visible_infrared", "vi_transforms", "run"]

#: Con-ReID cameras (0-based camids) standing in for infrared: c3 and c6, as SYSU-MM01's IR cameras.
IR_CAMS = (2, 5)


class GreyReplicate:
    """PIL image → greyscale ("L": 0.299 R + 0.587 G + 0.114 B) replicated to three channels."""

    def __call__(self, img):
        if not isinstance(img, Image.Image):
            raise TypeError(f"img: expected a PIL image, got {type(img).__name__}")
        return img.convert("L").convert("RGB")

    def __repr__(self):
        return "GreyReplicate()"


class _Then:
    def __init__(self, first, second):
        self.first, self.second = first, second

    def __call__(self, x):
        return self.second(self.first(x))


def vi_transforms(height: int, width: int, train: bool, base=None) -> Dict[int, object]:
    """{VISIBLE: pipeline, INFRARED: greyscale-replicate then pipeline} for ImageDataset; ``base``
    = ``base(height, width, train)`` (default ``reidkern.data.build_transforms`` without erasing)."""
    from reidkern.data import build_transforms

    make = base or (lambda h, w, t: build_transforms(h, w, t, random_erasing=0.0))
    return {VISIBLE: make(height, width, train), INFRARED: _Then(GreyReplicate(), make(height, width, train))}


def _with_modality(records, ir_cams):
    return [Record(r.path, r.pid, r.camid, INFRARED if r.camid in ir_cams else VISIBLE) for r in records]


def _both_modalities(records):
    mods = defaultdict(set)
    for r in records:
        mods[r.pid].add(r.modality)
    return [r for r in records if len(mods[r.pid]) == 2]


def con_reid_visible_infrared(root: str, ir_cams: Sequence[int] = IR_CAMS, num_trials: int = 10,
                              max_query_per_cam: Optional[int] = None, max_test_ids: Optional[int] = None,
                              seed: int = 0):
    """Con-ReID as a visible–infrared dataset (see the module docstring).

    Args:
        root: the con-reid folder. ir_cams: 0-based camids standing in for infrared.
        num_trials: gallery draws (one image per identity and visible camera each).
        max_query_per_cam: keep at most this many queries per identity and camera (CPU budget;
            None = all). max_test_ids: keep the first this many test identities (None = all).

    Returns a namespace: ``train`` (records with modality, pids relabelled 0..N−1),
    ``num_train_pids``, ``query`` (infrared stand-in records of the test ids), ``gallery_pool``
    (their visible records), ``trials`` (index lists into the pool).

    Raises FileNotFoundError / ValueError from the Con-ReID reader.
    """
    from reidkern.data import build_dataset
    from reidkern.data.datasets.base import relabel

    ds = build_dataset("con-reid", root)
    ir = set(int(c) for c in ir_cams)
    train = relabel(_both_modalities(_with_modality(ds.train, ir)))
    test = _both_modalities(_with_modality(list(ds.query) + list(ds.gallery), ir))
    ids = sorted({r.pid for r in test})
    if max_test_ids is not None:
        ids = set(ids[:max_test_ids])
        test = [r for r in test if r.pid in ids]
    rng = random.Random(seed)
    query = [r for r in test if r.modality == INFRARED]
    if max_query_per_cam is not None:
        by = defaultdict(list)
        for r in query:
            by[r.pid, r.camid].append(r)
        query = [r for key in sorted(by) for r in rng.sample(by[key], min(max_query_per_cam, len(by[key])))]
    pool = [r for r in test if r.modality == VISIBLE]
    slots = defaultdict(list)
    for i, r in enumerate(pool):
        slots[r.pid, r.camid].append(i)
    trials = []
    for t in range(num_trials):
        draw = random.Random(t)
        trials.append(sorted(draw.choice(slots[key]) for key in sorted(slots)))
    # Only the pool images some trial uses need features.
    used = sorted(set(i for tr in trials for i in tr))
    remap = {old: new for new, old in enumerate(used)}
    pool = [pool[i] for i in used]
    trials = [[remap[i] for i in tr] for tr in trials]
    return SimpleNamespace(train=train, num_train_pids=len({r.pid for r in train}), query=query,
                           gallery_pool=pool, trials=trials, ir_cams=tuple(sorted(ir)))


def run(root: str, steps: int = 30, batch_size: int = 16, height: int = 144, width: int = 72,
        num_trials: int = 10, max_query_per_cam: Optional[int] = 2, max_test_ids: Optional[int] = None,
        model_kwargs: Optional[dict] = None, seed: int = 0, progress: bool = False,
        fixed_batch: bool = False, lr: Optional[float] = None) -> Dict[str, object]:
    """Train CAL ``steps`` steps with the ``cal`` recipe (VI sampler, AGW schedule stretched to the
    run) through the engine's Trainer and evaluate with the SYSU-MM01 protocol before and after.

    ``fixed_batch``: train on the sampler's first batch every step (a test's quick over-fit check).
    ``lr``: base lr (default AGW's 0.1 scaled linearly to the batch, 0.1 · batch_size / 64).
    Returns {"before", "after": {"mean", "std"} of R1/R5/R10/R20/mAP/mINP, "losses", "logs",
    "seconds", sizes, "frozen_matching"}."""
    from reidkern.data import ImageDataset
    from reidkern.engine import Trainer, get_recipe
    from reidkern.engine.loader import TrainLoader
    from reidkern.engine.recipes.cal import evaluate_trials

    torch.manual_seed(seed)
    data = con_reid_visible_infrared(root, num_trials=num_trials, max_query_per_cam=max_query_per_cam,
                                     max_test_ids=max_test_ids)
    lr = 0.1 * batch_size / 64 if lr is None else lr
    recipe = get_recipe("cal", batch_size=batch_size, height=height, width=width, lr=lr)
    model = recipe.build_model(data.num_train_pids, **(model_kwargs or {}))
    train_set = ImageDataset(data.train, vi_transforms(height, width, True, recipe.build_transforms))
    first = list(recipe.train_sampler(data.train, batch_size, recipe.num_instances, seed))[:batch_size]

    def epoch_indices(epoch):
        if fixed_batch:
            return first * max(1, steps)
        return list(recipe.train_sampler(data.train, batch_size, recipe.num_instances, seed + epoch))

    loader = TrainLoader(train_set, epoch_indices, batch_size, seed=seed)
    test_tf = vi_transforms(height, width, False, recipe.build_transforms)

    def evaluate():
        res = evaluate_trials(model, recipe, data.query, data.gallery_pool, data.trials, transform=test_tf)
        return {"mean": res.mean, "std": res.std, "trials": len(res.trials)}

    before = evaluate()
    t0 = time.perf_counter()
    trainer = Trainer(recipe, model, loader, steps, device="cpu", progress=progress,
                      hooks=recipe.hooks)
    history = trainer.fit()
    seconds = time.perf_counter() - t0
    after = evaluate()
    steps_log = [h for h in history if "loss" in h]
    return {"before": before, "after": after, "losses": [h["loss"] for h in steps_log],
            "logs": steps_log, "seconds": seconds, "train_images": len(data.train),
            "train_ids": data.num_train_pids, "queries": len(data.query), "gallery_pool": len(data.gallery_pool),
            "frozen_matching": [int(v) for v in model.matching], "matching_counts": model.match_record.total(),
            "lr": lr, "batch_size": batch_size, "size": [height, width], "steps": steps}


def main(argv=None) -> None:
    from reidkern.data.paths import shared_data_dir

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="con-reid folder (default ../shared/data/con-reid)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=16, help="2·P·K images (K = 4 per modality)")
    p.add_argument("--height", type=int, default=144)
    p.add_argument("--width", type=int, default=72)
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--max-query-per-cam", type=int, default=2)
    p.add_argument("--max-test-ids", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="base lr (default 0.1 · batch / 64)")
    p.add_argument("--out", default=None, help="write the result JSON here")
    a = p.parse_args(argv)
    root = a.data or shared_data_dir("con-reid")
    if root is None:
        raise SystemExit("con-reid not found: pass --data")
    res = run(root, a.steps, a.batch, a.height, a.width, a.trials, a.max_query_per_cam, a.max_test_ids,
              progress=True, lr=a.lr)
    text = json.dumps(res, indent=1)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
