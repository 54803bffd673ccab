"""Demo: the real OSNet x0.25 ReID model on real pedestrian crops, on CPU.

Run ``python -m reidkern.models.demo [DATA_DIR]``. ``DATA_DIR`` defaults to ``$REIDKERN_DATA``
or ``../shared/data/reid-mini`` beside the repository; it must hold
``osnet_x0_25_msmt17.onnx`` (needs ``onnx``) and ``mot17-crops/`` or ``market-samples/``.

Evaluation split for ``mot17-crops`` (see its README): each identity appears in one MOT17
sequence only, so the sequence cannot serve as the camera; the frame number is used as the
camera id instead (one crop per identity per frame). Query = the crop from each identity's
first frame; gallery = all other crops. Under the Market protocol (gallery entries with the
query's pid and camid removed) every query keeps its positives from the other frames.
Consecutive frames are near-duplicates: numbers here check that the pipeline is right on real
feature distributions, not how good the model is.
"""
from __future__ import annotations

import os
import sys
from typing import List, NamedTuple, Optional, Tuple

import torch

from ..data.market1501 import parse_market_name
from ..data.paths import reid_mini_dir
from ..data.transforms import preprocess_batch
from ..metrics import evaluate_rank, pairwise_distance
from .backbones.osnet import osnet_x0_25

__all__ = ["CropFeatures", "osnet_on_crops", "query_gallery_split", "rank1_map", "main"]

ONNX_NAME = "osnet_x0_25_msmt17.onnx"


class CropFeatures(NamedTuple):
    """features: float32 [N, 512]; pids, camids, frames: int64 [N]; paths: list of N str.
    For ``mot17-crops`` ``camids`` are the frame numbers (see module docstring); for
    ``market-samples`` they are Market's 0-based camera ids."""

    features: torch.Tensor
    pids: torch.Tensor
    camids: torch.Tensor
    frames: torch.Tensor
    paths: List[str]


def _resolve(data_dir: Optional[str]) -> str:
    d = reid_mini_dir(data_dir)
    if d is None:
        raise FileNotFoundError(
            f"reid-mini data folder not found (data_dir={data_dir!r}, REIDKERN_DATA="
            f"{os.environ.get('REIDKERN_DATA')!r}, default ../shared/data/reid-mini)"
        )
    return d


@torch.no_grad()
def osnet_on_crops(
    data_dir: Optional[str] = None,
    subset: str = "mot17-crops",
    batch_size: int = 64,
    limit: Optional[int] = None,
    model: Optional[torch.nn.Module] = None,
) -> CropFeatures:
    """Embed real crops with the real OSNet x0.25 (MSMT17) model on CPU.

    Args:
        data_dir: the reid-mini folder (default: ``$REIDKERN_DATA`` or ``../shared/data/reid-mini``).
        subset: ``"mot17-crops"`` or ``"market-samples"``.
        batch_size: images per forward pass.
        limit: embed only the first ``limit`` crops in name order (quick checks).
        model: an OSNet to use instead of loading the ONNX weights.

    Returns:
        CropFeatures (features are the model's 512-d output, not normalised).

    Raises:
        FileNotFoundError: data folder / subset / ONNX file missing. ValueError: bad subset or
        batch_size.
    """
    if subset not in ("mot17-crops", "market-samples"):
        raise ValueError(f"subset: expected 'mot17-crops' or 'market-samples', got {subset!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    root = _resolve(data_dir)
    folder = os.path.join(root, subset)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"subset folder not found: {folder!r}")
    paths = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(".jpg"))
    if limit is not None:
        paths = paths[:limit]
    names = [parse_market_name(p) for p in paths]
    if model is None:
        model = osnet_x0_25(os.path.join(root, ONNX_NAME))
    model.eval()
    starts = range(0, len(paths), batch_size)
    if len(starts) > 2:  # several seconds on a CPU: show progress
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc="embed crops", unit="batch", leave=False)
    feats = [model(preprocess_batch(paths[i:i + batch_size], (256, 128))) for i in starts]
    frames = torch.tensor([n.frame for n in names], dtype=torch.long)
    cams = frames if subset == "mot17-crops" else torch.tensor([n.camid for n in names], dtype=torch.long)
    return CropFeatures(
        torch.cat(feats), torch.tensor([n.pid for n in names], dtype=torch.long), cams.clone(), frames, paths
    )


def query_gallery_split(pids: torch.Tensor, frames: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Query = index of each identity's earliest-frame crop; gallery = all other indices.
    Returns (query_idx, gallery_idx), int64, sorted."""
    q = []
    for pid in torch.unique(pids).tolist():
        idx = torch.nonzero(pids == pid).flatten()
        q.append(int(idx[torch.argmin(frames[idx])]))
    q_idx = torch.tensor(sorted(q), dtype=torch.long)
    mask = torch.ones(len(pids), dtype=torch.bool)
    mask[q_idx] = False
    return q_idx, torch.nonzero(mask).flatten()


def rank1_map(distmat, q_pids, g_pids, q_camids, g_camids) -> Tuple[float, float]:
    """Rank-1 and mAP (fractions in [0, 1]) under the Market protocol, by
    :func:`reidkern.metrics.evaluate_rank`. Raises ValueError if no query has a positive."""
    result = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=1)
    return result.rank(1), result.mAP


def cosine_distmat(qf: torch.Tensor, gf: torch.Tensor) -> torch.Tensor:
    """1 − cosine similarity, float64 [Q, G]."""
    return pairwise_distance(qf.double(), gf.double(), "cosine")


def main(argv: Optional[List[str]] = None) -> Tuple[float, float]:
    """Embed mot17-crops, evaluate, print and return (rank-1, mAP)."""
    argv = sys.argv[1:] if argv is None else argv
    out = osnet_on_crops(argv[0] if argv else None)
    q, g = query_gallery_split(out.pids, out.frames)
    dist = cosine_distmat(out.features[q], out.features[g])
    r1, mAP = rank1_map(dist, out.pids[q], out.pids[g], out.camids[q], out.camids[g])
    print(
        f"OSNet x0.25 (MSMT17) on {len(out.paths)} mot17 crops, {len(q)} queries / {len(g)} gallery: "
        f"rank-1 {100 * r1:.2f}%  mAP {100 * mAP:.2f}%"
    )
    return r1, mAP


if __name__ == "__main__":  # pragma: no cover
    main()
