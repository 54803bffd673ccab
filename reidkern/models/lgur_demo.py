"""LGUR on real image–caption pairs: ``../shared/data/mini-market1501`` (96 Market-1501 crops of 32
identities, two captions each), the offline MiniLM-L6 standing in for BERT-base.

Reads the folder with the CUHK-PEDES-format reader (``build_dataset("mini_market1501")``), trains
with the ``lgur`` recipe through the engine's :class:`~reidkern.engine.Trainer`, and evaluates
text→image retrieval (R@1/5/10, mAP, mINP; all test captions against all test images) before and
after. The schedule's lr steps are moved past the end of this short run (constant lr); the DeiT
starts from random weights (no ImageNet checkpoint is shipped), so the figures check the pipeline,
not the paper's accuracy.

    python -m reidkern.models.lgur_demo [--data DIR] [--steps 30] [--batch 16] [--height 384 --width 128]
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Dict, Optional

import torch


def run(root: str, steps: int = 30, batch_size: int = 16, height: int = 384, width: int = 128,
        encoder: Optional[str] = None, model_kwargs: Optional[dict] = None, seed: int = 0,
        progress: bool = False, lr: Optional[float] = None) -> Dict[str, object]:
    """Train ``steps`` steps and evaluate before/after. Returns {"before", "after": metric dicts,
    "losses": per-step losses, "seconds"}. ``lr`` overrides the recipe's base lr (1e-4; the LSTM,
    projections and classifiers get 10×). Raises FileNotFoundError for a missing folder."""
    from reidkern.data import build_dataset
    from reidkern.engine import Trainer, get_recipe
    from reidkern.engine.loader import TrainLoader
    from reidkern.engine.recipes.lgur import text_encoder_folder

    folder = text_encoder_folder(encoder)
    torch.manual_seed(seed)
    ds = build_dataset("mini_market1501", root)
    over = {} if lr is None else {"lr": lr}
    recipe = get_recipe("lgur", batch_size=batch_size, height=height, width=width, milestones=(10**6,), **over)
    kwargs = {"img_size": (height, width), **(model_kwargs or {})}
    model = recipe.build_model(ds.num_train_pids, text_encoder=folder, **kwargs)
    train_set = recipe.build_dataset(ds.train, recipe.build_transforms(height, width, True))

    def epoch_indices(epoch):
        return list(recipe.train_sampler(ds.train, batch_size, 1, seed + epoch))

    loader = TrainLoader(train_set, epoch_indices, batch_size, seed=seed)
    before = recipe.evaluate(model, recipe, ds.query, ds.gallery)
    t0 = time.perf_counter()
    trainer = Trainer(recipe, model, loader, steps, device="cpu", progress=progress)
    history = trainer.fit()
    seconds = time.perf_counter() - t0
    after = recipe.evaluate(model, recipe, ds.query, ds.gallery)
    return {"before": before, "after": after, "losses": [h["loss"] for h in history if "loss" in h],
            "seconds": seconds, "train_pairs": len(train_set), "queries": len(ds.query), "gallery": len(ds.gallery)}


def main(argv=None) -> None:
    from reidkern.data.paths import shared_data_dir

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="mini-market1501 folder (default ../shared/data/mini-market1501)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--height", type=int, default=384)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--encoder", default=None, help="text encoder folder (default: $REIDKERN_TEXT_ENCODER or MiniLM)")
    a = p.parse_args(argv)
    root = a.data or shared_data_dir("mini-market1501")
    if root is None:
        raise SystemExit("mini-market1501 not found: pass --data")
    res = run(root, a.steps, a.batch, a.height, a.width, a.encoder, progress=True)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
