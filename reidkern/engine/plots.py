"""Pictures of a run (matplotlib, PNG, written atomically): ranked results and training curves."""
from __future__ import annotations

import json
from typing import Optional, Sequence

import numpy as np

__all__ = ["rank_list", "show_ranks", "plot_curves"]


def rank_list(qf, gf, q_pids, g_pids, q_camids, g_camids, topk: int = 10, metric: str = "cosine"):
    """Top-``topk`` gallery indices [Q, topk] per query under the Market protocol (gallery images
    of the query's identity and camera are skipped) and whether each is a true match [Q, topk].
    Ranking ties break by gallery index (stable sort)."""
    import torch

    from reidkern.metrics import pairwise_distance

    dist = pairwise_distance(torch.as_tensor(qf).float(), torch.as_tensor(gf).float(), metric).numpy()
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    idx = np.zeros((len(dist), topk), dtype=np.int64)
    hit = np.zeros((len(dist), topk), dtype=bool)
    for i, row in enumerate(dist):
        order = np.argsort(row, kind="stable")
        keep = order[~((g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i]))][:topk]
        idx[i, :len(keep)] = keep
        hit[i, :len(keep)] = g_pids[keep] == q_pids[i]
    return idx, hit


def show_ranks(q_paths: Sequence[str], g_paths: Sequence[str], idx, hit, out: str,
               queries: Optional[Sequence[int]] = None, title: str = "") -> str:
    """Draw query | top-k gallery rows: the query with a black frame, each gallery image with a
    green (same identity) or red (other identity) frame. Writes the PNG ``out`` atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from reidkern.atomic import atomic_path

    queries = list(range(len(idx))) if queries is None else list(queries)
    k = idx.shape[1]
    fig, axes = plt.subplots(len(queries), k + 1, figsize=(1.0 * (k + 1), 2.0 * len(queries)), squeeze=False)
    for r, q in enumerate(queries):
        cells = [(q_paths[q], "black", "query")] + [
            (g_paths[idx[q, j]], "limegreen" if hit[q, j] else "red", str(j + 1)) for j in range(k)]
        for c, (p, color, label) in enumerate(cells):
            ax = axes[r, c]
            with Image.open(p) as im:
                ax.imshow(im.convert("RGB").resize((64, 128)))
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_edgecolor(color)
                s.set_linewidth(4)
            if r == 0:
                ax.set_title(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return out


def plot_curves(metrics_jsonl: str, out: str) -> str:
    """Training loss (and its parts), learning rate and validation mAP against the step, from a
    run's metrics.jsonl; PNG written atomically to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from reidkern.atomic import atomic_path

    rows = [json.loads(line) for line in open(metrics_jsonl) if line.strip()]
    steps = [r for r in rows if "loss" in r]
    vals = [r for r in rows if "val_mAP" in r]
    if not steps:
        raise ValueError(f"metrics_jsonl: {metrics_jsonl!r} has no step records")
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    x = [r["step"] for r in steps]
    terms = [k for k in steps[0] if k.startswith("loss_")]  # a recipe's logged loss terms
    for key in ("loss", "ce", "tri", *terms):
        if key in steps[0]:
            axes[0].plot(x, [r[key] for r in steps], label=key, lw=1)
    axes[0].set_xlabel("step")
    axes[0].set_title("training loss")
    axes[0].legend()
    axes[1].plot(x, [r["lr"] for r in steps])
    axes[1].set_xlabel("step")
    axes[1].set_title("learning rate (group 0)")
    if vals:
        axes[2].plot([r["step"] for r in vals], [100 * r["val_mAP"] for r in vals], "o-")
    axes[2].set_xlabel("step")
    axes[2].set_title("validation mAP (%)")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return out
