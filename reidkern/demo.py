"""``reidkern demo``: real pedestrian crops → reidkern's OSNet → reidkern evaluation, on CPU.

With the reid-mini folder (``--data DIR``; default ``$REIDKERN_DATA`` or
``../shared/data/reid-mini``, holding ``osnet_x0_25_msmt17.onnx`` and ``mot17-crops/`` or
``market-samples/``), its real MOT17 crops are embedded by reidkern's own OSNet x0_25 loaded from
the real ReID model (ONNX initializers, needs ``onnx``), cross-checked against onnxruntime running
that ONNX file when onnxruntime is installed, split into query and gallery, evaluated with reidkern
and checked against the float64 reference. Without the folder, identity-clustered synthetic
features stand in. ``reidkern demo --dataset NAME`` scores the same model zero-shot on a dataset's
test split (:func:`run_dataset`).

Evaluation split for ``mot17-crops`` (see its README): each identity appears in one MOT17
sequence only, so the sequence cannot serve as the camera; the frame number is used as the
camera id instead (one crop per identity per frame). Query = the crop from each identity's
first frame; gallery = all other crops. Under the Market protocol (gallery entries with the
query's pid and camid removed) every query keeps its positives from the other frames.
Consecutive frames are near-duplicates: numbers here check that the pipeline is right on real
feature distributions, not how good the model is.
"""
import os
import time
from typing import List, NamedTuple, Optional, Tuple

import torch

from reidkern.data.market1501 import parse_market_name
from reidkern.data.paths import reid_mini_dir
from reidkern.data.transforms import preprocess_batch
from reidkern.metrics import evaluate_rank
from reidkern.metrics.distance import ranking_distance
from reidkern.models.backbones.osnet import osnet_x0_25
from reidkern.ops.reference.evaluate_rank import evaluate_rank_reference

__all__ = ["CropFeatures", "osnet_on_crops", "query_gallery_split", "embed_onnx", "synthetic_features",
           "run", "run_dataset"]

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


def embed_onnx(model_path, paths, batch_size=32):
    """Features [N, 512] float32 (NumPy) of the crops at ``paths`` from an ONNX ReID model run by
    onnxruntime, with the same preprocessing (256×128, ImageNet mean/std)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ImportError("embed_onnx needs onnxruntime: pip install 'reidkern[onnx]'") from exc
    import numpy as np

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    feats = [sess.run(None, {name: preprocess_batch(paths[s:s + batch_size], (256, 128)).numpy()})[0]
             for s in range(0, len(paths), batch_size)]
    return np.concatenate(feats).astype(np.float32)


def synthetic_features(num_ids=100, per_id=6, dim=512, seed=0):
    """(qf, gf, q_pids, g_pids, q_camids, g_camids): one query per id (camera 0), the rest gallery."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.nn.functional.normalize(torch.randn(num_ids, dim, generator=g), dim=1)
    pids = torch.arange(num_ids).repeat_interleave(per_id)
    feats = centers[pids] + 0.05 * torch.randn(len(pids), dim, generator=g)
    camids = torch.arange(per_id).repeat(num_ids)
    q = camids == 0
    return feats[q], feats[~q], pids[q], pids[~q], camids[q], camids[~q]


def run(data_dir=None, metric="cosine", log=print):
    """Embeds and evaluates; returns the RankResult.

    Raises:
        FileNotFoundError: ``data_dir`` lacks the crops or the ONNX model.
        AssertionError: reidkern's evaluation disagrees with the float64 reference, or reidkern's
            OSNet with onnxruntime.
    """
    t0 = time.perf_counter()
    if data_dir is not None:
        crops = osnet_on_crops(str(data_dir))
        log(f"embedded {len(crops.paths)} real MOT17 crops with reidkern's OSNet x0_25 "
            f"(MSMT17-trained, {ONNX_NAME})")
        try:
            ort_feats = torch.from_numpy(embed_onnx(f"{data_dir}/{ONNX_NAME}", crops.paths))
            diff = float((crops.features - ort_feats).abs().max())
            scale = float(ort_feats.abs().max())
            log(f"onnxruntime on the same file: max |difference| {diff:.2e} (features up to {scale:.1f})")
            if diff > 1e-4 + 1e-4 * scale:
                raise AssertionError(f"reidkern's OSNet differs from onnxruntime by {diff}")
        except ImportError:
            log("onnxruntime not installed: cross-check skipped")
        q, g = query_gallery_split(crops.pids, crops.frames)
        qf, gf = crops.features[q], crops.features[g]
        q_pids, g_pids, q_camids, g_camids = crops.pids[q], crops.pids[g], crops.camids[q], crops.camids[g]
        source = "real MOT17 crops (camera id = frame number)"
    else:
        qf, gf, q_pids, g_pids, q_camids, g_camids = synthetic_features()
        source = "synthetic identity-clustered features (no data path given)"
    t_embed = time.perf_counter() - t0
    distmat = ranking_distance(qf, gf, metric)
    t1 = time.perf_counter()
    result = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=10)
    t_eval = time.perf_counter() - t1
    ref_first, ref_ap, _ = evaluate_rank_reference(distmat, q_pids, g_pids, q_camids, g_camids)
    valid = ref_first >= 0
    if not torch.equal(result.first_hit, ref_first) or abs(result.mAP - float(ref_ap[valid].mean())) > 1e-6:
        raise AssertionError("reidkern evaluation disagrees with the float64 reference")
    log(f"{source}: {len(qf)} queries x {len(gf)} gallery, {metric} distance")
    log(result.summary())
    log(f"embedding {t_embed:.2f} s, evaluation {1e3 * t_eval:.2f} ms; equal to the float64 reference")
    return result


def run_dataset(name="con-reid", root=None, data_dir=None, metric="cosine", flip=False, log=print):
    """Zero-shot OSNet x0.25 (reid-mini's MSMT17 ONNX model) on a dataset's test split, read with
    :func:`reidkern.data.build_dataset` and scored with the single-query image-ReID protocol.

    Args:
        name: dataset name (default Con-ReID). root: its folder (default ``../shared/data/<name>``).
        data_dir: the reid-mini folder holding the ONNX model (default as :func:`run`).

    Returns:
        :class:`reidkern.zero_shot.ZeroShotResult`.

    Raises:
        FileNotFoundError: dataset folder or model not found.
    """
    from reidkern.data import build_dataset, shared_data_dir
    from reidkern.zero_shot import evaluate_model, load_backbone

    root = root or shared_data_dir(name)
    if root is None:
        raise FileNotFoundError(f"dataset folder for {name!r} not found (pass its folder; default ../shared/data/{name})")
    mini = reid_mini_dir(data_dir)
    if mini is None:
        raise FileNotFoundError("reid-mini folder with osnet_x0_25_msmt17.onnx not found (pass --data DIR)")
    ds = build_dataset(name, root)
    log(repr(ds))
    model = load_backbone("osnet_x0_25", f"{mini}/{ONNX_NAME}")
    out = evaluate_model(model, ds, metric=metric, flip=flip)
    log(f"OSNet x0.25 (MSMT17) zero-shot on {name}: {metric} distance{', flip-averaged' if flip else ''}")
    log(out.result.summary())
    log(f"feature extraction {out.extract_s:.1f} s, evaluation {1e3 * out.eval_s:.1f} ms")
    return out
