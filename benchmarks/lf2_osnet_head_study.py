"""Why LF2's heads on OSNet start below the source model, and which clustering to adapt with.

The real OSNet x0.25 MSMT17 model (../shared/data/reid-mini) runs once over Con-ReID (train,
query, gallery; each image and its mirror); everything else is computed on its conv5 maps
[N, 128, 16, 8]:

1. test scores (212 queries × 5,207 gallery, Market protocol, cosine) of the features LF2's heads
   can start from: OSNet's own 512-d embedding, GAP / GMP / GAP + GMP of the map, the parts' GAP,
   and LF2's teacher feature at initialisation with the official head (GAP + GMP, Kaiming part
   projections) and with the source-preserving head (GAP, identity part projections);
2. pseudo-label quality on the training split (NMI / ARI against the true ids, which are never
   used for training) of MiniBatchKMeans (k = 71, the split's identity count) and of DBSCAN on
   reidkern's sparse Jaccard distance, for the whole split and every 2nd image.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/lf2_osnet_head_study.py [--cache /tmp/maps]

Prints one line per measurement (results: benchmarks/results/cpu-xeon-2core/lf2_con_reid.md).
"""
from __future__ import annotations

import argparse
import os
import sys


def conv5_maps(model, records, cache):
    """{"maps", "fmaps"}: float16 [N, 128, 16, 8] of the images and their mirrors; pids, camids."""
    import torch

    from _common import mirrored_maps

    m = mirrored_maps(lambda x: model.featuremaps(x.contiguous(memory_format=torch.channels_last)), records,
                      cache, dtype=torch.float16)
    return {"maps": m[0], "fmaps": m[1], "pids": torch.tensor([r[1] for r in records]),
            "camids": torch.tensor([r[2] for r in records])}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="folder holding con-reid/ and reid-mini/ (default ../shared/data)")
    p.add_argument("--cache", default=None, help="folder to keep the conv5 maps in (re-used when present)")
    args = p.parse_args(argv)
    import torch
    import torch.nn.functional as F
    from torch import nn

    from reidkern.data import build_dataset, shared_data_dir
    from reidkern.metrics import evaluate_features
    from reidkern.models.backbones import osnet_x0_25
    from reidkern.models.lf2 import LF2, LF2Net
    from reidkern.uda import dbscan_pseudo_labels, kmeans_pseudo_labels, pseudo_label_quality

    torch.set_num_threads(1)
    base = args.data or os.path.dirname(shared_data_dir("con-reid") or "")
    if not base or not os.path.isdir(os.path.join(base, "con-reid")):
        sys.exit("lf2_osnet_head_study: ../shared/data/con-reid not found (pass --data)")
    ds = build_dataset("con-reid", os.path.join(base, "con-reid"))
    osnet = osnet_x0_25(os.path.join(base, "reid-mini", "osnet_x0_25_msmt17.onnx")).eval()
    osnet = osnet.to(memory_format=torch.channels_last)
    if args.cache:
        os.makedirs(args.cache, exist_ok=True)
    sets = {s: conv5_maps(osnet, getattr(ds, s), args.cache and os.path.join(args.cache, f"{s}.pt"))
            for s in ("query", "gallery", "train")}
    q, g, t = sets["query"], sets["gallery"], sets["train"]

    def feats(d, fn, flip):
        keys = ("maps", "fmaps") if flip else ("maps",)
        with torch.no_grad():
            out = [torch.cat([fn(d[k][i:i + 512].float()) for i in range(0, len(d[k]), 512)]) for k in keys]
        return F.normalize(sum(F.normalize(o, dim=1) for o in out), dim=1)

    def score(name, fn):
        for flip in (False, True):
            r = evaluate_features(feats(q, fn, flip), feats(g, fn, flip), q["pids"], g["pids"], q["camids"],
                                  g["camids"], metric="cosine", progress=False)
            print(f"test | {name} | flip {'on' if flip else 'off'} | R1 {100 * r.rank(1):.1f} | "
                  f"mAP {100 * r.mAP:.1f} | mINP {100 * r.mINP:.1f}", flush=True)

    gap = lambda x: x.mean((2, 3))  # noqa: E731
    gmp = lambda x: x.amax((2, 3))  # noqa: E731
    score("OSNet 512-d embedding (source model)", lambda x: osnet.fc(gap(x)))
    score("conv5 GAP", gap)
    score("conv5 GMP", gmp)
    score("conv5 GAP + GMP", lambda x: gap(x) + gmp(x))
    score("upper half GAP", lambda x: gap(x[:, :, :8]))
    score("lower half GAP", lambda x: gap(x[:, :, 8:]))

    class Maps(nn.Module):  # the trunk's output is the input here
        def featuremaps(self, x):
            return x

    for pooling, part_init in (("avgmax", "kaiming"), ("avg", "identity")):
        torch.manual_seed(0)
        model = LF2(LF2Net(Maps(), 128, 71, pooling=pooling, part_init=part_init)).eval()
        score(f"LF2 teacher at init, pooling={pooling}, part_init={part_init}", model)

    pids = t["pids"].numpy()
    for every in (1, 2):
        for flip in (False, True):
            x = feats(t, gap, flip)[::every]
            y = pids[::every]
            r = kmeans_pseudo_labels(x, 71, init_size=1500)
            qq = pseudo_label_quality(r.labels, y)
            print(f"cluster | GAP, every {every}, flip {'on' if flip else 'off'} | kmeans k=71 | clusters "
                  f"{r.num_clusters} | outliers 0 | NMI {qq['nmi']:.3f} | ARI {qq['ari']:.3f}", flush=True)
            for k1 in (20, 30):
                for eps in (0.6, 0.7):
                    r = dbscan_pseudo_labels(x, eps=eps, k1=k1)
                    qq = pseudo_label_quality(r.labels, y)
                    print(f"cluster | GAP, every {every}, flip {'on' if flip else 'off'} | dbscan k1={k1} eps={eps} | "
                          f"clusters {r.num_clusters} | outliers {r.num_outliers} | NMI {qq['nmi']:.3f} | "
                          f"ARI {qq['ari']:.3f}", flush=True)


if __name__ == "__main__":
    main()
