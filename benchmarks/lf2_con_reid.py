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
    p.add_argument("--no-eval", action="store_true", help="skip the query/gallery evaluation (smoke runs)")
    p.add_argument("--limit-train", type=int, default=0, help="use only the first N target images (smoke runs)")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from reidkern.data import build_dataset, shared_data_dir
    from reidkern.engine import get_recipe
    from reidkern.engine.recipes.lf2 import build_lf2, build_lf2_trainer, evaluate_target

    base = args.data or os.path.dirname(shared_data_dir("con-reid") or "")
    if not base or not os.path.isdir(os.path.join(base, "con-reid")):
        sys.exit("lf2_con_reid: ../shared/data/con-reid not found (pass --data)")
    ds = build_dataset("con-reid", os.path.join(base, "con-reid"))
    if args.limit_train:
        ds.train = ds.train[: args.limit_train]
    onnx = os.path.join(base, "reid-mini", "osnet_x0_25_msmt17.onnx")
    torch.manual_seed(args.seed)
    model = build_lf2(backbone="osnet_x0_25", weights=onnx, num_clusters=args.num_clusters)
    recipe = get_recipe("lf2", lr=args.lr)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    rows = []
    if not args.no_eval:
        zero = evaluate_target(model, ds, recipe)
        rows.append({"epoch": "zero-shot (LF2 heads at init)", **zero, "seconds": round(time.time() - t0)})
        print(json.dumps(rows[-1]), flush=True)
    dbscan = {"eps": args.eps, "min_samples": args.min_samples}
    trainer = build_lf2_trainer(model, ds, epochs=args.epochs, iters=args.iters, recipe=recipe,
                                method=args.method, num_clusters=args.num_clusters, dbscan_kwargs=dbscan,
                                seed=args.seed, out_dir=args.out, report_quality=True, progress=False,
                                evaluate=not args.no_eval)
    trainer.fit()
    q = {r["epoch"]: r for r in trainer.hooks[0].quality}
    if args.no_eval:
        rows += [{"epoch": e, "mAP": float("nan"), "R1": float("nan"), "mINP": float("nan"),
                  **{k: v for k, v in r.items() if k != "epoch"}} for e, r in q.items()]
    for rec in trainer.history:
        if "val_mAP" in rec:
            e = rec["epoch"] - 1
            rows.append({"epoch": e, "mAP": rec["val_mAP"], "R1": rec["val_R1"], "mINP": rec["val_mINP"],
                         **{k: v for k, v in q.get(e, {}).items() if k != "epoch"}})
    with open(os.path.join(args.out, "table.json"), "w") as f:
        json.dump({"args": vars(args), "rows": rows, "seconds": round(time.time() - t0)}, f, indent=1)
    if args.table:
        write_table(args, rows, time.time() - t0)


def write_table(args, rows, seconds):
    lines = [f"| epoch | R1 | mAP | mINP | clusters g/u/l | NMI g/u/l | ARI g/u/l |", "|---|---:|---:|---:|---|---|---|"]
    for r in rows:
        cl = "/".join(str(r.get(f"{b}_clusters", "")) for b in ("global", "upper", "lower")) if "global_clusters" in r else "–"
        nmi = "/".join(f"{r[f'{b}_nmi']:.3f}" for b in ("global", "upper", "lower")) if "global_nmi" in r else "–"
        ari = "/".join(f"{r[f'{b}_ari']:.3f}" for b in ("global", "upper", "lower")) if "global_ari" in r else "–"
        lines.append(f"| {r['epoch']} | {100 * r['R1']:.1f} | {100 * r['mAP']:.1f} | {100 * r['mINP']:.1f} | {cl} | {nmi} | {ari} |")
    with open(args.table, "a") as f:
        f.write(f"\n### {args.method}" + (f" k={args.num_clusters}" if args.method == "kmeans" else f" eps={args.eps}")
                + f", {args.epochs} epochs × {args.iters} iterations, lr {args.lr}, seed {args.seed} "
                f"({seconds / 60:.0f} min)\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
