"""Short real-data run of an image-ReID recipe on Con-ReID (../shared/data/con-reid) through the
engine's ``reidkern.engine.run.train`` (what ``reidkern train`` runs): score the test split (standard
protocol, whole query/gallery), train N steps, score it again. It adds what the CLI does not
offer: recipe overrides for a CPU-sized run (image size, batch, a constant lr). Results land in
OUT/results.json and OUT/metrics.jsonl (the losses of every step).

    PYTHONPATH=. python tools/con_reid_run.py dpti --steps 30 --height 128 --width 64 --batch-size 16 \\
        --constant-lr --out runs/dpti-con-reid
"""
import argparse
import json
import os


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="recipe name")
    ap.add_argument("--data", default=None, help="Con-ReID folder (default ../shared/data/con-reid)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--height", type=int, default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="extra model keyword (Python literal), e.g. img_size=(128,64)")
    ap.add_argument("--constant-lr", action="store_true",
                    help="no warm-up and no lr steps (a recipe's schedule stretched onto a few steps "
                         "would decay before the run has started learning)")
    ap.add_argument("--precise-bn", type=int, default=None, metavar="N",
                    help="re-estimate BatchNorm statistics over N training batches before each test "
                         "evaluation (recipe.precise_bn)")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    import ast

    from reidkern.data import build_dataset
    from reidkern.data.paths import shared_data_dir
    from reidkern.engine import get_recipe
    from reidkern.engine.run import train

    root = args.data or shared_data_dir("con-reid")
    if root is None:
        raise SystemExit("con-reid not found: pass --data")
    over = {k: v for k, v in (("height", args.height), ("width", args.width), ("batch_size", args.batch_size),
                              ("lr", args.lr), ("precise_bn", args.precise_bn)) if v is not None}
    if args.constant_lr:
        over.update(warmup_epochs=0, milestones=())
    base = get_recipe(args.model)
    model_kwargs = dict(base.model_kwargs)
    for kv in args.model_arg:
        key, value = kv.split("=", 1)
        model_kwargs[key] = ast.literal_eval(value)
    recipe = get_recipe(args.model, val_ids=0, model_kwargs=model_kwargs, **over)
    print(f"overrides: {over}, model {model_kwargs}", flush=True)
    out = train(recipe, build_dataset("con-reid", root), args.out, steps=args.steps, eval_before=True,
                num_workers=args.workers, progress=False, dataset_name="con-reid", device="cpu")
    losses = []
    with open(os.path.join(args.out, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if "loss" in rec:
                losses.append(rec["loss"])
    summary = {"recipe": recipe.name, "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in over.items()},
               "model_kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in model_kwargs.items()},
               "steps": args.steps, "loss_first": losses[0], "loss_last": losses[-1],
               "before": out["before"], "after": out["after"]}
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
