"""The engine's CLI commands: ``reidkern train | test | extract | show-ranks | export``.

Registered by :func:`reidkern.cli.main` through :func:`add_commands`; errors go through its
``run_command`` wrapper (one ``reidkern <command>: ...`` line, exit code 2).
"""
from __future__ import annotations

import os
import sys

__all__ = ["add_commands"]


def _recipe(args):
    from reidkern.engine import get_recipe

    over = {}
    if getattr(args, "batch_size", None) is not None:
        over["batch_size"] = args.batch_size
    if getattr(args, "lr", None) is not None:
        over["lr"] = args.lr
    if getattr(args, "val_ids", None) is not None:
        over["val_ids"] = args.val_ids
    if getattr(args, "weights", None):
        from reidkern.engine import get_recipe as g
        over["model_kwargs"] = {**g(args.model).model_kwargs, "weights": args.weights}
    return get_recipe(args.model, **over)


def _threads(args):
    import torch

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)


def _positive(name):
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise ValueError(f"{name}: expected a positive integer, got {text!r}") from None
        if v < 1:
            raise ValueError(f"{name}: expected a positive integer, got {v}")
        return v
    return parse


def cmd_train(args):
    from reidkern.engine.plots import plot_curves
    from reidkern.engine.run import check_out_dir, format_scores, load_dataset, train

    _threads(args)
    for name in ("steps", "epochs"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ValueError(f"--{name}: expected a positive integer, got {v}")
    recipe = _recipe(args)
    out = args.out or os.path.join("runs", f"{recipe.name}-{args.dataset}")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out: {out!r} exists and is a file, not a folder")
    if args.resume and not os.path.isfile(args.resume):
        raise FileNotFoundError(f"--resume: checkpoint {args.resume!r} does not exist")
    from reidkern.engine.ddp import end_distributed, init_distributed

    ddp = init_distributed()
    ds = load_dataset(recipe, args.dataset, args.data)
    check_out_dir(out)  # created only once the arguments and the data are known to be good
    done = False
    try:
        res = train(recipe, ds, out, steps=args.steps, epochs=args.epochs, amp=args.amp, resume=args.resume,
                    device=args.device, num_workers=args.workers, eval_before=args.eval_before,
                    checkpoint_every=args.checkpoint_every, dataset_name=args.dataset)
        done = True
    except KeyboardInterrupt:
        last = os.path.join(out, "last.pt")
        print(f"\nreidkern train: interrupted; the last complete checkpoint is {last if os.path.exists(last) else 'none yet'}"
              f" (continue with --resume {last} and the same --steps/--epochs)", file=sys.stderr)
        return 130
    finally:
        if ddp:
            end_distributed(barrier=done)  # a failing rank must not wait for the others
    if int(os.environ.get("RANK", "0")) == 0:
        plot_curves(os.path.join(out, "metrics.jsonl"), os.path.join(out, "curves.png"))
        b, a = res.get("before"), res.get("after")
        print(f"\n{recipe.name} on {args.dataset}: ")
        if b:
            print(f"  before: {format_scores(b)}")
        if a:
            print(f"  after:  {format_scores(a)}")
        names = ("last.pt", "best.pt", "metrics.jsonl", "results.json", "curves.png", "query.npz", "gallery.npz")
        # only what this run wrote: no best.pt without a validation split, no .npz with a recipe's own evaluate
        print(f"  written to {out}/ ({', '.join(n for n in names if os.path.exists(os.path.join(out, n)))})")
    return 0


def _model_and_data(args):
    from reidkern.engine.checkpoint import load_checkpoint, model_state_from_checkpoint
    from reidkern.engine.run import build_model_for, load_dataset

    recipe = _recipe(args)
    ckpt = load_checkpoint(args.checkpoint, recipe=recipe.name) if args.checkpoint else None
    ds = load_dataset(recipe, args.dataset, args.data) if getattr(args, "dataset", None) else None
    if ckpt is not None:
        model = build_model_for(recipe, int(ckpt["num_classes"]))
        model_state_from_checkpoint(model, ckpt, args.checkpoint)
    else:  # the recipe's initial model (e.g. the pretrained OSNet, zero-shot); its classifier is
        # not on the inference path, and the paper models refuse fewer than 2 ids: 2 at least
        model = build_model_for(recipe, max(2, ds.num_train_pids if ds is not None else 2))
    return recipe, model.eval(), ds


def cmd_test(args):
    from reidkern.engine.run import format_scores, load_dataset, test

    from reidkern.engine.checkpoint import load_checkpoint

    _threads(args)
    recipe = _recipe(args)
    load_checkpoint(args.checkpoint, recipe=recipe.name)  # a bad file fails before the data is read
    ds = load_dataset(recipe, args.dataset, args.data)
    scores = test(recipe, args.checkpoint, ds, device=args.device, num_workers=args.workers,
                  rerank=True if args.rerank else None)
    print(f"{recipe.name} {args.checkpoint} on {args.dataset} ({len(ds.query)} query x {len(ds.gallery)} gallery): "
          f"{format_scores(scores)}")
    return 0


def cmd_extract(args):
    from reidkern.engine.evaluate import features_of, save_npz
    from reidkern.engine.run import check_out_dir

    _threads(args)
    if args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"--out: {args.out!r} exists and is a file, not a folder")
    recipe, model, ds = _model_and_data(args)
    check_out_dir(args.out)  # created only once the checkpoint and the data are known to be good
    for split, recs in (("query", ds.query), ("gallery", ds.gallery)):
        f = features_of(model, recipe, recs, device=args.device, num_workers=args.workers, desc=split)
        path = save_npz(f, recs, os.path.join(args.out, f"{split}.npz"))
        print(f"{split}: {tuple(f.feats.shape)} features -> {path}")
    return 0


def cmd_show_ranks(args):
    import numpy as np

    from reidkern.engine.plots import rank_list, show_ranks

    arrays = []
    for arg, path in (("--query", args.query), ("--gallery", args.gallery)):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{arg}: file {path!r} does not exist")
        with np.load(path, allow_pickle=False) as d:
            missing = [k for k in ("feats", "pids", "camids", "paths") if k not in d.files]
            if missing:
                raise ValueError(f"{arg}: {path!r} lacks {missing} (write it with reidkern extract)")
            arrays.append({k: d[k] for k in ("feats", "pids", "camids", "paths")})
    q, g = arrays
    if args.out and os.path.isdir(args.out):
        raise ValueError(f"--out: {args.out!r} is a folder; give a .png file name")
    idx, hit = rank_list(q["feats"], g["feats"], q["pids"], g["pids"], q["camids"], g["camids"],
                         topk=args.topk, metric=args.metric)
    rng = np.random.default_rng(args.seed)
    n = min(args.num, len(idx))
    queries = sorted(rng.choice(len(idx), size=n, replace=False).tolist())
    show_ranks(q["paths"], g["paths"], idx, hit, args.out, queries=queries,
               title=f"top-{args.topk} gallery ({args.metric}); green = same identity, red = other")
    print(f"{n} queries x top-{args.topk}: {int(hit[queries].sum())} of {hit[queries].size} correct -> {args.out}")
    return 0


def cmd_export(args):
    from reidkern.engine.export import export_onnx

    recipe, model, _ = _model_and_data(args)
    res = export_onnx(model, recipe, args.out)
    print(f"{recipe.name} -> {args.out}: onnxruntime max |diff| {res['max_abs_diff']:.2e} "
          f"(features up to {res['max_abs']:.2f})")
    return 0


def add_commands(sub) -> None:
    """Add the engine's subcommands to ``reidkern``'s argparse subparsers."""
    def common(p, data=True, checkpoint=None):
        p.add_argument("model", help="recipe name (reidkern.engine.recipe_names())")
        if data:
            p.add_argument("--dataset", required=True, help="dataset name (reidkern.data.dataset_names())")
            p.add_argument("--data", required=True, help="dataset folder")
        if checkpoint is not None:
            p.add_argument("--checkpoint", required=checkpoint, default=None, help="a reidkern checkpoint (.pt)")
        p.add_argument("--weights", default=None, help="weights to start from (overrides the recipe's): backbone "
                       "weights, or for la_transformer/dpti/cal/lgur a checkpoint of the model (identity "
                       "classifiers of another size are skipped)")
        p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
        p.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
        p.add_argument("--threads", type=int, default=None, help="torch CPU threads")

    t = sub.add_parser("train", help="train a recipe on a dataset (also under torchrun)")
    common(t)
    t.add_argument("--steps", type=int, default=None, help="total optimiser steps (>= 1)")
    t.add_argument("--epochs", type=int, default=None, help="epochs (default: the recipe's)")
    t.add_argument("--amp", nargs="?", const="bf16", default=None, choices=("bf16", "fp16"),
                   help="autocast (bf16 when given without a value)")
    t.add_argument("--out", default=None, help="output folder (default runs/MODEL-DATASET)")
    t.add_argument("--resume", default=None, help="continue from this last.pt")
    t.add_argument("--eval-before", action="store_true", help="score the test split before training too")
    t.add_argument("--checkpoint-every", type=int, default=None, help="also checkpoint every N steps")
    t.add_argument("--batch-size", type=int, default=None, help="global batch P*K (default: the recipe's)")
    t.add_argument("--lr", type=float, default=None, help="base learning rate (default: the recipe's)")
    t.add_argument("--val-ids", type=int, default=None, help="training ids held out for validation (0: none)")
    t.set_defaults(fn=cmd_train)

    s = sub.add_parser("test", help="score a checkpoint on a dataset's query/gallery")
    common(s, checkpoint=True)
    s.add_argument("--rerank", action="store_true", help="only the k-reciprocal re-ranked scores")
    s.set_defaults(fn=cmd_test)

    x = sub.add_parser("extract", help="query/gallery features to .npz (reidkern eval's input)")
    common(x, checkpoint=False)
    x.add_argument("--out", required=True, help="output folder (query.npz, gallery.npz)")
    x.set_defaults(fn=cmd_extract)

    r = sub.add_parser("show-ranks", help="picture of queries and their top-k gallery matches (PNG)")
    r.add_argument("--query", required=True, help="query.npz from reidkern extract / train")
    r.add_argument("--gallery", required=True, help="gallery.npz from reidkern extract / train")
    r.add_argument("--out", default="ranks.png", help="PNG file (default ranks.png)")
    r.add_argument("--num", type=_positive("--num"), default=6, help="queries shown (default 6)")
    r.add_argument("--topk", type=_positive("--topk"), default=8, help="gallery images per query (default 8)")
    r.add_argument("--metric", choices=("cosine", "euclidean"), default="cosine")
    r.add_argument("--seed", type=int, default=0, help="which queries are drawn")
    r.set_defaults(fn=cmd_show_ranks)

    e = sub.add_parser("export", help="ONNX of a model's inference path, checked with onnxruntime")
    common(e, data=False, checkpoint=False)
    e.add_argument("--out", required=True, help="ONNX file to write")
    e.set_defaults(fn=cmd_export)
