"""Command line: ``reidkern info | eval | demo | bench | train | test | extract | show-ranks | export``
(the last five: :mod:`reidkern.engine.commands`, docs/engine.md).

* ``reidkern eval --query q.npz --gallery g.npz`` — rank-1/5/10, mAP, mINP and the time taken; each
  npz holds ``feats`` [N, D], ``pids`` [N] and ``camids`` [N]. ``reidkern eval --dataset con-reid
  --data DIR --weights osnet_x0_25_msmt17.onnx`` embeds a dataset's query and gallery with a backbone
  first (reidkern.zero_shot). Both score with the single-query image-ReID protocol (camid −1 = no
  camera; query ids absent from the gallery are an error unless ``--skip-missing``).
* ``reidkern demo [--data DIR]`` — embeds the real crops of reid-mini with the OSNet ReID model and
  evaluates them (synthetic features when no data folder is found); ``--dataset con-reid`` runs the
  model zero-shot on Con-ReID's test split through its reader and the image-ReID protocol.
* ``reidkern bench [--full] [--smoke] [--out DIR] [-k EXPR]`` — runs the benchmark suite of a source
  checkout (pytest-benchmark) on the installed, compiled reidkern and writes the ratio table
  (benchmarks/report.py): by default a representative set at paper sizes (a few minutes on 2 CPU
  cores), ``--full`` every benchmark and size. A reidkern provider that cannot run fails the run.

Errors: a command that fails on bad input (missing or unreadable file, malformed arrays, invalid
argument) prints one line ``reidkern <command>: <what is wrong>`` on stderr and exits with code 2,
never a traceback (``REIDKERN_DEBUG=1`` re-raises for one). Commands raise :class:`CommandError`
(or ValueError/TypeError/OSError) and :func:`run_command` turns it into that line, so every command
registered in :func:`main` gets the same behaviour. Files are written atomically
(:mod:`reidkern.atomic`): nothing is left behind by a failed command.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from reidkern.atomic import atomic_open

EXIT_USAGE = 2  # bad input or arguments, as argparse uses


class CommandError(Exception):
    """A command failed on its input; the message is printed as ``reidkern <command>: <message>``."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``reidkern eval: argument --k1: ...``, exit 2) like the
    commands' own errors; ``-h`` still prints the full usage."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} -h)\n")


def run_command(name, fn, args):
    """Runs ``fn(args)``; user errors become one stderr line and exit code 2."""
    try:
        return fn(args)
    except (CommandError, ValueError, TypeError, OSError, KeyError) as exc:
        if os.environ.get("REIDKERN_DEBUG"):
            raise
        msg = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in msg:
            msg = f"{msg}: {exc.filename}"
        print(f"reidkern {name}: {msg}", file=sys.stderr)
        return EXIT_USAGE


def _load_npz(path, arg):
    """(feats [N, D] float, pids [N] int64, camids [N] int64) from an npz; CommandError naming
    ``arg`` for anything else (missing/corrupt file, missing keys, wrong shapes or dtypes)."""
    import zipfile

    path = Path(path)
    if not path.exists():
        raise CommandError(f"{arg} file {path} does not exist")
    if not path.is_file():
        raise CommandError(f"{arg} {path} is not a file")
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise CommandError(f"{arg} file {path} holds one array, not an npz archive "
                               "(expected keys feats, pids, camids)")
        with data:
            missing = [k for k in ("feats", "pids", "camids") if k not in data.files]
            if missing:
                raise CommandError(f"{arg} file {path} lacks {missing} "
                                   f"(it has {data.files}; expected feats, pids, camids)")
            feats, pids, camids = data["feats"], data["pids"], data["camids"]
    except CommandError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        detail = " ".join(str(exc).split())
        raise CommandError(f"{arg} file {path} is not a readable npz archive ({detail})") from None
    if feats.dtype.kind not in "fiu" or feats.ndim != 2:
        raise CommandError(f"{arg} feats must be a 2-D numeric array [N, D], got dtype {feats.dtype} "
                           f"shape {feats.shape}")
    for key, ids in (("pids", pids), ("camids", camids)):
        if ids.dtype.kind not in "iu" or ids.shape != (feats.shape[0],):
            raise CommandError(f"{arg} {key} must be a 1-D integer array of length N = "
                               f"{feats.shape[0]}, got dtype {ids.dtype} shape {ids.shape}")
    if feats.dtype.kind != "f":
        feats = feats.astype(np.float64)
    return feats, pids.astype(np.int64), camids.astype(np.int64)


def _dataset_features(args):
    """(qf, q_pids, q_camids, gf, g_pids, g_camids) of a dataset's test split embedded by a
    backbone from local weights (reidkern.zero_shot); saved as query.npz / gallery.npz in
    ``--save-features`` so later runs can use --query/--gallery."""
    import torch

    from reidkern.data import build_dataset
    from reidkern.zero_shot import extract_split, load_backbone

    if not args.data or not args.weights:
        raise CommandError("--dataset needs --data DIR (the dataset folder) and --weights FILE "
                           "(e.g. reid-mini/osnet_x0_25_msmt17.onnx)")
    ds = build_dataset(args.dataset, args.data)
    if any(r.modality for r in ds.query + ds.gallery) or any(r.captions for r in ds.query):
        raise CommandError(f"--dataset {args.dataset}: eval scores single-modality image ReID; "
                           "visible-infrared and text datasets are evaluated by `reidkern test`")
    print(repr(ds))
    model = load_backbone(args.model, args.weights)
    torch.set_grad_enabled(False)
    q = extract_split(model, ds.query, args.height, args.width, args.batch_size, args.flip, desc="query")
    g = extract_split(model, ds.gallery, args.height, args.width, args.batch_size, args.flip, desc="gallery")
    if args.save_features:
        out = Path(args.save_features)
        out.mkdir(parents=True, exist_ok=True)
        for name, f in (("query", q), ("gallery", g)):
            with atomic_open(out / f"{name}.npz", "wb") as fh:
                np.savez(fh, feats=f.feats.numpy(), pids=f.pids.numpy(), camids=f.camids.numpy())
        print(f"features saved in {out}/query.npz, gallery.npz")
    return (q.feats.numpy(), q.pids.numpy(), q.camids.numpy(), g.feats.numpy(), g.pids.numpy(),
            g.camids.numpy())


def cmd_eval(args):
    import torch

    from reidkern.metrics.protocols import evaluate_image_reid, evaluate_image_reid_distmat

    if args.dataset:
        if args.query or args.gallery:
            raise CommandError("give either --query/--gallery feature files or --dataset, not both")
        qf, q_pids, q_camids, gf, g_pids, g_camids = _dataset_features(args)
    else:
        if not args.query or not args.gallery:
            raise CommandError("needs --query and --gallery npz files, or --dataset NAME --data DIR --weights FILE")
        qf, q_pids, q_camids = _load_npz(args.query, "--query")
        gf, g_pids, g_camids = _load_npz(args.gallery, "--gallery")
    qf, gf = torch.from_numpy(np.ascontiguousarray(qf)), torch.from_numpy(np.ascontiguousarray(gf))
    if args.max_rank > len(gf) >= 1:  # the default 50 on a small gallery: no warning on the console
        args.max_rank = len(gf)
    missing = "skip" if args.skip_missing else "raise"
    t0 = time.perf_counter()
    if args.rerank:
        from reidkern.rerank import k_reciprocal
        if args.metric == "cosine":  # re-ranking over the unit-normalised features (fast-reid's way)
            from reidkern.ops._validate import normalize_rows  # right for huge rows too
            qf, gf = normalize_rows(qf.double(), dim=1), normalize_rows(gf.double(), dim=1)
        distmat = k_reciprocal(qf, gf, k1=args.k1, k2=args.k2, lambda_value=args.lambda_value,
                               backend=args.backend)
        result = evaluate_image_reid_distmat(distmat, q_pids, g_pids, q_camids, g_camids,
                                             max_rank=args.max_rank, missing=missing,
                                             trapezoid=args.trapezoid, backend=args.backend)
    else:
        result = evaluate_image_reid(qf, gf, q_pids, g_pids, q_camids, g_camids,
                                     metric=args.metric, max_rank=args.max_rank, missing=missing,
                                     trapezoid=args.trapezoid, backend=args.backend)
    elapsed = time.perf_counter() - t0
    print(f"query {len(qf)} x gallery {len(gf)}, dim {qf.shape[1]}, metric "
          f"{args.metric}{' + k-reciprocal re-ranking' if args.rerank else ''}")
    for k in (1, 5, 10):
        if k <= len(result.cmc):
            print(f"Rank-{k:<3} {100 * result.rank(k):6.2f}%")
    print(f"mAP     {100 * result.mAP:6.2f}%")
    print(f"mINP    {100 * result.mINP:6.2f}%")
    print(f"valid queries {result.num_valid_queries}, skipped {result.num_skipped_queries}")
    print(f"time    {elapsed:.3f} s")
    return 0


def cmd_demo(args):
    from reidkern import demo
    from reidkern.data.paths import reid_mini_dir

    if args.dataset:
        demo.run_dataset(args.dataset, args.dataset_root, args.data, metric=args.metric, flip=args.flip)
        return 0
    data = args.data or reid_mini_dir()
    if data is None:
        print("reid-mini data not found (pass --data DIR): using synthetic features")
    demo.run(data, metric=args.metric)
    return 0


def _repo_root():
    for base in (Path.cwd(), Path(__file__).resolve().parent.parent):
        if (base / "benchmarks" / "report.py").exists():
            return base
    raise CommandError("run it from a reidkern source checkout (benchmarks/ not found)")


def write_env(out_dir, root):
    """env.json beside the results: device, versions, build facts, git revision of the run and the
    folder reidkern was imported from."""
    import platform

    import torch

    import reidkern

    info = reidkern.build_info()
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                           capture_output=True, text=True)
    info.update(
        device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU: {cpu}",
        cpu_count=os.cpu_count(), python=platform.python_version(), numpy=np.__version__,
        git_revision=rev.stdout.strip() or None, git_dirty=bool(dirty.stdout.strip()),
        reidkern_path=os.path.dirname(os.path.abspath(reidkern.__file__)),
    )
    with atomic_open(Path(out_dir) / "env.json", "w") as f:
        json.dump(info, f, indent=2)
    return info


def bench_command(root, out, full=False, smoke=False, k=None, min_rounds=3):
    """The pytest command line of `reidkern bench` and the folder it must run in.

    It runs in ``benchmarks/``, not the checkout's root: ``python -m pytest`` puts its working
    folder first on sys.path, and the root's uncompiled ``reidkern/`` sources would shadow the
    installed, compiled package (benchmarks/conftest.py stops a run that imports no compiled
    library).
    """
    json_tmp = Path(out) / ".benchmarks.json.tmp"  # moved into place only when the run succeeded
    cmd = [sys.executable, "-m", "pytest", str(root / "benchmarks"), "-q", "-p", "no:cacheprovider",
           f"--benchmark-json={json_tmp}", "--benchmark-columns=median,iqr,rounds",
           f"--bench-env={out}", f"--bench-set={'full' if full or smoke else 'representative'}"]
    if smoke:  # tiny sizes, one timed round each: a table whose figures mean nothing
        cmd += ["--benchmark-min-rounds=1", "--benchmark-max-time=0", "--benchmark-warmup=off"]
    else:
        cmd.append(f"--benchmark-min-rounds={min_rounds}")
    if k:
        cmd += ["-k", k]
    return cmd, root / "benchmarks"


def cmd_bench(args):
    root = _repo_root()
    out = Path(args.out or root / "benchmarks" / "results" / "local").resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["REIDKERN_BENCH_SMOKE"] = "1" if args.smoke else "0"
    cmd, cwd = bench_command(root, out, full=args.full, smoke=args.smoke, k=args.k,
                             min_rounds=args.min_rounds)
    print(f"reidkern bench: {'smoke sizes' if args.smoke else 'full suite' if args.full else 'representative set (--full: all sizes)'}"
          f", results in {out}", flush=True)
    print("running:", " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=cwd, env=env)
    json_tmp = out / ".benchmarks.json.tmp"
    if rc != 0:
        json_tmp.unlink(missing_ok=True)
        print(f"reidkern bench: the benchmark run failed (pytest exit status {rc}); no table written",
              file=sys.stderr)
        return rc
    json_path = out / "benchmarks.json"
    os.replace(json_tmp, json_path)
    rc = subprocess.call([sys.executable, str(root / "benchmarks" / "report.py"), str(json_path),
                          "--out", str(out)], cwd=cwd)
    with open(out / "env.json") as f:
        on_gpu = json.load(f).get("cuda_available")
    if rc == 0 and not args.smoke and not on_gpu:  # CPU GEMM bound next to the CPU targets
        rc = subprocess.call([sys.executable, str(root / "benchmarks" / "roofline.py"), str(json_path),
                              "--out", str(out / "roofline.md")], cwd=cwd)
    return rc


def cmd_info(_args):
    import reidkern

    print(json.dumps(reidkern.build_info(), indent=2))
    return 0


def main(argv=None):
    ap = _Parser(prog="reidkern", description="reidkern: fast, exact ReID kernels")
    sub = ap.add_subparsers(dest="cmd", required=True)

    sub.add_parser("info", help="what was compiled (backends, CUDA archs, torch)").set_defaults(fn=cmd_info)

    e = sub.add_parser("eval", help="CMC/mAP/mINP of query and gallery features (npz), or of a "
                                    "backbone on a dataset's test split")
    e.add_argument("--query", default=None, help="npz with feats [Q,D], pids [Q], camids [Q]")
    e.add_argument("--gallery", default=None, help="npz with feats [G,D], pids [G], camids [G]")
    e.add_argument("--dataset", default=None,
                   help="image-ReID dataset name (market1501, con-reid, folder, ...; reidkern.data.build_dataset) "
                        "whose query/gallery are embedded by --model with --weights")
    e.add_argument("--data", default=None, help="the dataset's folder (with --dataset)")
    e.add_argument("--model", default="osnet_x0_25", choices=("osnet_x0_25",))
    e.add_argument("--weights", default=None, help="local weights of --model (.onnx export or torchreid .pth)")
    e.add_argument("--height", type=int, default=256)
    e.add_argument("--width", type=int, default=128)
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--flip", action="store_true", help="flip-averaged features")
    e.add_argument("--save-features", default=None, help="folder for query.npz / gallery.npz (with --dataset)")
    e.add_argument("--skip-missing", action="store_true",
                   help="skip queries whose identity is absent from the gallery instead of failing")
    e.add_argument("--metric", choices=("euclidean", "cosine"), default="euclidean")
    e.add_argument("--max-rank", type=int, default=50)
    e.add_argument("--trapezoid", action="store_true", help="Market-1501 MATLAB (trapezoid) AP")
    e.add_argument("--backend", choices=("cpp", "cuda", "triton", "reference"), default=None)
    e.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking first")
    e.add_argument("--k1", type=int, default=20)
    e.add_argument("--k2", type=int, default=6)
    e.add_argument("--lambda-value", type=float, default=0.3)
    e.set_defaults(fn=cmd_eval)

    d = sub.add_parser("demo", help="real crops -> OSNet -> evaluation (reid-mini)")
    d.add_argument("--data", default=None, help="reid-mini folder (default: ../shared/data/reid-mini)")
    d.add_argument("--metric", choices=("euclidean", "cosine"), default="cosine")
    d.add_argument("--dataset", default=None,
                   help="instead: zero-shot OSNet on this dataset's test split (e.g. con-reid)")
    d.add_argument("--dataset-root", default=None, help="its folder (default ../shared/data/<dataset>)")
    d.add_argument("--flip", action="store_true", help="flip-averaged features (with --dataset)")
    d.set_defaults(fn=cmd_demo)

    b = sub.add_parser("bench", help="run the benchmark suite and print the ratio table")
    b.add_argument("--full", action="store_true",
                   help="every benchmark and size (default: a representative set at paper sizes)")
    b.add_argument("--smoke", action="store_true", help="tiny sizes, one timed call each (checks the path)")
    b.add_argument("--out", default=None, help="results folder (default benchmarks/results/local)")
    b.add_argument("-k", default=None, help="pytest -k expression to select benchmarks")
    b.add_argument("--min-rounds", type=int, default=3)
    b.set_defaults(fn=cmd_bench)

    from reidkern.engine.commands import add_commands

    add_commands(sub)  # train, test, extract, show-ranks, export

    try:
        args, extra = ap.parse_known_args(argv)
    except SystemExit as exc:  # usage error (one line printed, code 2) or -h (code 0)
        return exc.code
    if extra:  # reported under the command's name, like its other usage errors
        print(f"reidkern {args.cmd}: unrecognized arguments: {' '.join(extra)} "
              f"(see reidkern {args.cmd} -h)", file=sys.stderr)
        return EXIT_USAGE
    return run_command(args.cmd, args.fn, args)


if __name__ == "__main__":
    raise SystemExit(main())
