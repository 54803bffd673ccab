"""Which parts of the `osnet` recipe make fine-tuning the real OSNet x0.25 (MSMT17) help on Con-ReID.

conv1–conv3 are frozen in the recipe, so their outputs never change: this study computes them once
for Con-ReID's train, query and gallery images and their mirrors ([N, 96, 16, 8] float32 maps,
~1.3 GB, cached with ``--cache``) and then trains only what the recipe trains (conv4, conv5, the fc
embedding, the BNNeck head) from those maps — each variant takes minutes instead of an hour on
2 CPU cores. Training: P×K 16×4 batches of the training split (all 71 ids; no validation carve-out:
this is a study of the recipe's parts, not model selection), a random mirror per sample, Adam.
Test: 212 queries × 5,207 gallery, Market protocol, cosine on the 512-d embedding (before the
BNNeck), without and with flip averaging, and k-reciprocal re-ranked (k1 20, k2 6, λ 0.3) with
``--rerank``.

    PYTHONPATH=. python benchmarks/osnet_finetune_study.py --cache /tmp/osnet_maps --steps 100 \\
        --loss tri --lr 3e-5 [--fc-bn eval] [--sched warmcos --warm 0.05] [--loss cetri]

Prints one ``FINAL`` line per run (results: docs/engine.md, "Fine-tuning OSNet on Con-ReID").
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=None, help="folder holding con-reid/ and reid-mini/ (default ../shared/data)")
    ap.add_argument("--cache", required=True, help="folder for the conv3 maps (~1.3 GB)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=3e-5, help="conv4/conv5/fc learning rate (head: 10x)")
    ap.add_argument("--loss", choices=("tri", "cetri"), default="tri",
                    help="batch-hard triplet (margin 0.3) alone, or + label-smoothed CE on the BNNeck")
    ap.add_argument("--fc-bn", choices=("train", "eval"), default="train",
                    help="the embedding's BatchNorm1d: trains, or keeps MSMT17's statistics")
    ap.add_argument("--sched", choices=("const", "warmcos"), default="const")
    ap.add_argument("--warm", type=float, default=0.05, help="warm-up fraction of the run (warmcos)")
    ap.add_argument("--rerank", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    from _common import mirrored_maps
    from reidkern.data import RandomIdentitySampler, build_dataset, shared_data_dir
    from reidkern.metrics.protocols import evaluate_image_reid, evaluate_image_reid_distmat
    from reidkern.models.baseline import baseline_osnet
    from reidkern.nn.losses import TripletLoss
    from reidkern.rerank import k_reciprocal

    data = a.data or os.path.dirname(shared_data_dir("con-reid") or "")
    if not data or not os.path.isdir(os.path.join(data, "con-reid")):
        sys.exit("osnet_finetune_study: ../shared/data/con-reid not found (pass --data)")
    ds = build_dataset("con-reid", os.path.join(data, "con-reid"))
    model = baseline_osnet(ds.num_train_pids, weights=os.path.join(data, "reid-mini", "osnet_x0_25_msmt17.onnx"),
                           freeze_fc_bn=a.fc_bn == "eval")
    net = model.backbone.net.eval()
    os.makedirs(a.cache, exist_ok=True)
    maps = {s: mirrored_maps(lambda x: net.conv3(net.conv2(net.maxpool(net.conv1(x)))), getattr(ds, s),
                             os.path.join(a.cache, f"{s}.pt"), batch_size=128)
            for s in ("train", "query", "gallery")}
    pids = {s: torch.tensor([r.pid for r in getattr(ds, s)]) for s in maps}
    camids = {s: torch.tensor([r.camid for r in getattr(ds, s)]) for s in maps}
    for m in (net.conv1, net.conv2, net.conv3):
        m.requires_grad_(False)

    def embed(c3):
        return net.fc(torch.flatten(net.global_avgpool(net.conv5(net.conv4(c3))), 1))

    @torch.no_grad()
    def features(split, flip):
        model.eval()
        f = torch.cat([embed(maps[split][0, i:i + 512]) for i in range(0, maps[split].shape[1], 512)])
        if flip:
            f = f + torch.cat([embed(maps[split][1, i:i + 512]) for i in range(0, maps[split].shape[1], 512)])
        model.train()
        return f

    def scores():
        out = {}
        for flip in (False, True):
            qf, gf = features("query", flip), features("gallery", flip)
            r = evaluate_image_reid(qf, gf, pids["query"], pids["gallery"], camids["query"], camids["gallery"],
                                    metric="cosine", max_rank=10)
            sfx = "_flip" if flip else ""
            out.update({f"R1{sfx}": round(100 * r.rank(1), 2), f"mAP{sfx}": round(100 * float(r.mAP), 2)})
        if a.rerank:
            dist = k_reciprocal(F.normalize(qf, dim=1), F.normalize(gf, dim=1), k1=20, k2=6, lambda_value=0.3)
            r = evaluate_image_reid_distmat(dist, pids["query"], pids["gallery"], camids["query"], camids["gallery"],
                                            max_rank=10)
            out.update(R1_flip_rr=round(100 * r.rank(1), 2), mAP_flip_rr=round(100 * float(r.mAP), 2))
        return out

    body = [p for n, p in model.named_parameters() if n.startswith("backbone.") and p.requires_grad]
    head = [p for n, p in model.named_parameters() if not n.startswith("backbone.") and p.requires_grad]
    opt = torch.optim.Adam([{"params": body, "lr": a.lr}, {"params": head, "lr": 10 * a.lr}])

    def factor(s):
        if a.sched == "const":
            return 1.0
        w = max(1, int(a.steps * a.warm))
        return 0.1 + 0.9 * s / w if s < w else 0.5 * (1 + math.cos(math.pi * (s - w) / max(1, a.steps - w)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    triplet = TripletLoss(margin=0.3)
    model.train()
    t0, step, epoch, hist = time.time(), 0, 0, []
    while step < a.steps:
        order = list(RandomIdentitySampler(ds.train, 64, 4, seed=a.seed * 1000 + epoch))
        epoch += 1
        for i in range(0, len(order) - 63, 64):
            idx = torch.tensor(order[i:i + 64])
            mirror = (torch.rand(64) < 0.5).view(-1, 1, 1, 1)
            feat = embed(torch.where(mirror, maps["train"][1, idx], maps["train"][0, idx]))
            loss = triplet(feat, pids["train"][idx])
            if a.loss == "cetri":
                logits = model.classifier(model.bottleneck(feat))
                loss = loss + F.cross_entropy(logits, pids["train"][idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            hist.append(loss.item())
            if step % 25 == 0:
                print(f"step {step} loss {np.mean(hist[-25:]):.3f} ({time.time() - t0:.0f} s)", flush=True)
            if step >= a.steps:
                break
    print("FINAL", json.dumps(scores()), json.dumps(vars(a)), flush=True)


if __name__ == "__main__":
    main()
