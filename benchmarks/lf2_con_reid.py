"""Real unsupervised adaptation with LF2: MSMT17 → Con-ReID.

Source model: the real OSNet x0.25 MSMT17 weights (../shared/data/reid-mini, BN folded) as the
trunk of LF2's student and teacher (LF2 heads on OSNet). Target: Con-ReID's training split,
labels ignored (they only score the pseudo-labels: NMI, ARI, clusters). After every epoch the
teacher is evaluated on Con-ReID's query/gallery (Market protocol, cosine, flip-averaged).

    python benchmarks/lf2_con_reid.py --epochs 6 --iters 40 --out /tmp/lf2_run \
        [--method kmeans --num-clusters 70 | --method dbscan --eps 0.6] [--table PATH]

Writes ``out/metrics.jsonl`` (the engine's log) and, with ``--table``, a markdown table.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="folder holding con-reid/ and reid-mini/ (default ../shared/data)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--method", choices=("kmeans", "dbscan"), default="kmeans")
    p.add_argument("--num-clusters", type=int, default=70)
    p.add_argument("--eps", type=float, default=0.6)
    p.add_argument("--min-samples", type=int, default=4)
    p.add_argument("--lr", type=float, default=3.5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    p.add_argument("--table", default=None)
    p.add_argument("--skip-baselines", action="store_true", help="no source / zero-shot rows (measured before)")
    p.add_argument("--no-flip", action="store_true",
                   help="no flip averaging of test and clustering features (CPU budget; official: flip)")
    p.add_argument("--no-channels-last", action="store_true", help="keep NCHW (channels-last is ~25%% faster on CPU)")
    p.add_argument("--table-only", action="store_true", help="only (re)write --table from out/metrics.jsonl")
    p.add_argument("--no-eval", action="store_true", help="skip the query/gallery evaluation (smoke runs)")
    p.add_argument("--limit-train", type=int, default=0, help="use only the first N target images (smoke runs)")
    p.add_argument("--train-every", type=int, default=1, help="target = every N-th training image (CPU budget)")
    p.add_argument("--pk-batch", type=int, default=64, help="images per P×K block (official 64 = 16 × 4)")
    p.add_argument("--limit-test", type=int, default=0, help="every N-th query/gallery image only (smoke runs)")
    p.add_argument("--gallery-every", type=int, default=1, help="all queries, every N-th gallery image (CPU budget)")
    p.add_argument("--pooling", choices=("avg", "avgmax"), default="avg",
                   help="global-branch pooling (OSNet default avg; official avgmax)")
    p.add_argument("--part-init", choices=("identity", "kaiming"), default="identity",
                   help="part projections' init (OSNet default identity; official kaiming)")
    p.add_argument("--backbone-lr-mult", type=float, default=1.0, help="student backbone lr = lr x this (official 1)")
    p.add_argument("--frozen", default="", help="comma-separated student backbone stages kept frozen, e.g. conv1,conv2,conv3")
    p.add_argument("--k1", type=int, default=20, help="DBSCAN's Jaccard k1")
    p.add_argument("--cluster-no-flip", action="store_true", help="no flip averaging of the clustering features only")
    p.add_argument("--eval-no-flip", action="store_true",
                   help="per-epoch scores without flip; the last model is scored with flip too")
    args = p.parse_args(argv)

    if args.table_only:
        return write_table(args, rows_from_log(args.out), None)
    import torch

    torch.set_num_threads(args.threads)
    from reidkern.data import build_dataset, shared_data_dir
    from reidkern.engine.recipes.lf2 import build_lf2, build_lf2_trainer, evaluate_target, lf2_osnet_recipe

    base = args.data or os.path.dirname(shared_data_dir("con-reid") or "")
    if not base or not os.path.isdir(os.path.join(base, "con-reid")):
        sys.exit("lf2_con_reid: ../shared/data/con-reid not found (pass --data)")
    ds = build_dataset("con-reid", os.path.join(base, "con-reid"))
    if args.limit_train:
        ds.train = ds.train[: args.limit_train]
    if args.train_every > 1:
        ds.train = ds.train[:: args.train_every]
    if args.gallery_every > 1:
        ds.gallery = ds.gallery[:: args.gallery_every]
    if args.limit_test:
        ds.query, ds.gallery = ds.query[:: args.limit_test], ds.gallery[:: args.limit_test]
    onnx = os.path.join(base, "reid-mini", "osnet_x0_25_msmt17.onnx")
    torch.manual_seed(args.seed)
    model = build_lf2(backbone="osnet_x0_25", weights=onnx, num_clusters=args.num_clusters,
                      pooling=args.pooling, part_init=args.part_init)
    if not args.no_channels_last:
        model = model.to(memory_format=torch.channels_last)
    frozen = tuple(f"student.backbone.{s}" for s in args.frozen.split(",") if s)
    recipe = lf2_osnet_recipe(backbone_lr_mult=args.backbone_lr_mult, frozen=frozen, lr=args.lr,
                        batch_size=3 * args.pk_batch, flip_test=not (args.no_flip or args.eval_no_flip))
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    rows = []
    if not args.no_eval and not args.skip_baselines:
        # The source model itself (OSNet's own 512-d embedding), same query/gallery: the reference.
        from reidkern.models.backbones import osnet_x0_25

        source = osnet_x0_25(onnx).eval()
        src = evaluate_target(source, ds, dataclasses.replace(recipe, extract=lambda m, b: m(b["img"])))
        rows.append({"epoch": "source model (OSNet 512-d embedding, zero-shot)", **src})
        with open(os.path.join(args.out, "source.json"), "w") as f:
            json.dump(rows[-1], f)
        zero = evaluate_target(model, ds, recipe)
        rows.append({"epoch": "zero-shot (LF2 heads at init)", **zero, "seconds": round(time.time() - t0)})
        print(json.dumps(rows[-1]), flush=True)
        with open(os.path.join(args.out, "zero_shot.json"), "w") as f:
            json.dump(rows[-1], f)
    dbscan = {"eps": args.eps, "min_samples": args.min_samples, "k1": args.k1}
    trainer = build_lf2_trainer(model, ds, epochs=args.epochs, iters=args.iters, recipe=recipe,
                                method=args.method, num_clusters=args.num_clusters, dbscan_kwargs=dbscan, pk_batch=args.pk_batch,
                                seed=args.seed, out_dir=args.out, report_quality=True, progress=False,
                                evaluate=not args.no_eval, cluster_flip=not (args.no_flip or args.cluster_no_flip),
                                frozen=frozen)
    trainer.fit()
    if (args.gallery_every > 1 or args.eval_no_flip) and not args.no_eval:
        # The last teacher on the whole gallery, flip-averaged unless --no-flip (the per-epoch
        # scores may use every N-th gallery image and no flip).
        full = build_dataset("con-reid", os.path.join(base, "con-reid"))
        final = evaluate_target(trainer.model, full, dataclasses.replace(recipe, flip_test=not args.no_flip))
        with open(os.path.join(args.out, "final_full_gallery.json"), "w") as f:
            json.dump({"epoch": f"last (full gallery, {len(full.gallery)} images, flip {'off' if args.no_flip else 'on'})",
                       **final}, f)
        print(json.dumps(final), flush=True)
    rows = rows_from_log(args.out)
    with open(os.path.join(args.out, "table.json"), "w") as f:
        json.dump({"args": vars(args), "rows": rows, "seconds": round(time.time() - t0)}, f, indent=1)
    if args.table:
        write_table(args, rows, time.time() - t0)


def rows_from_log(out):
    """Table rows from the run folder: zero-shot row, then per epoch the pseudo-label quality
    (logged at the epoch's start) and the teacher's scores (validated at its end)."""
    rows = []
    for name in ("source.json", "zero_shot.json"):
        if os.path.exists(os.path.join(out, name)):
            with open(os.path.join(out, name)) as f:
                rows.append(json.load(f))
    final = os.path.join(out, "final_full_gallery.json")
    quality, scores = {}, {}
    with open(os.path.join(out, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if "global_clusters" in rec:
                quality[rec["epoch"]] = rec
            if "val_mAP" in rec:
                scores[rec["epoch"] - 1] = rec
    for e in sorted(quality):
        q = {k: v for k, v in quality[e].items() if k != "epoch"}
        sc = scores.get(e, {})
        rows.append({"epoch": e, "mAP": sc.get("val_mAP", float("nan")), "R1": sc.get("val_R1", float("nan")),
                     "mINP": sc.get("val_mINP", float("nan")), "step": sc.get("step"), **q})
    if os.path.exists(final):
        with open(final) as f:
            rows.append(json.load(f))
    return rows


def write_table(args, rows, seconds):
    lines = [f"| epoch | R1 | mAP | mINP | clusters g/u/l | outliers g/u/l | NMI g/u/l | ARI g/u/l |",
             "|---|---:|---:|---:|---|---|---|---|"]
    for r in rows:
        cl = "/".join(str(r.get(f"{b}_clusters", "")) for b in ("global", "upper", "lower")) if "global_clusters" in r else "–"
        out = "/".join(str(r.get(f"{b}_outliers", "")) for b in ("global", "upper", "lower")) if "global_clusters" in r else "–"
        nmi = "/".join(f"{r[f'{b}_nmi']:.3f}" for b in ("global", "upper", "lower")) if "global_nmi" in r else "–"
        ari = "/".join(f"{r[f'{b}_ari']:.3f}" for b in ("global", "upper", "lower")) if "global_ari" in r else "–"
        lines.append(f"| {r['epoch']} | {100 * r['R1']:.1f} | {100 * r['mAP']:.1f} | {100 * r['mINP']:.1f} | {cl} | {out} | {nmi} | {ari} |")
    took = "" if seconds is None else f" ({seconds / 60:.0f} min)"
    with open(args.table, "a") as f:
        f.write(f"\n### {args.method}" + (f" k={args.num_clusters}" if args.method == "kmeans" else f" eps={args.eps}")
                + f", {args.epochs} epochs × {args.iters} iterations of 3 × {args.pk_batch} images, lr {args.lr}, "
                f"target = every {args.train_every}-th training image, gallery = every {args.gallery_every}-th "
                f"image, flip {'off' if args.no_flip else 'on'}, "
                f"seed {args.seed}{took}\n\n"
                + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
