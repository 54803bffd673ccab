"""The main job's evaluation demo: real pedestrian crops → OSNet features → reidkern evaluation.

With the reid-mini folder (real MOT17 crops and the OSNet x0_25 ReID model as ONNX, run by
onnxruntime), the crops are embedded, split into query and gallery, evaluated with reidkern and
checked against the float64 reference. Without it, identity-clustered synthetic features stand in.
"""
import re
import time
from pathlib import Path

import numpy as np
import torch

from reidkern.metrics import evaluate_rank, pairwise_distance
from reidkern.ops.reference.evaluate_rank import evaluate_rank_reference

# Market-1501 file names: PPPP_cCsS_FFFFFF_NN.jpg (pid, camera, sequence, frame, box).
NAME_RE = re.compile(r"^(-?\d+)_c(\d+)s(\d+)_(\d+)_(\d+)")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def parse_name(path):
    """(pid, camid, frame) from a Market-1501-style file name; ValueError if it does not match."""
    m = NAME_RE.match(Path(path).name)
    if m is None:
        raise ValueError(f"{Path(path).name!r} is not a Market-1501-style name PPPP_cCsS_FFFFFF_NN.jpg")
    return int(m.group(1)), int(m.group(2)), int(m.group(4))


def load_images(paths, height=256, width=128):
    """Images as a float32 array [N, 3, H, W]: RGB, resized, /255, ImageNet mean/std."""
    from PIL import Image

    out = np.empty((len(paths), 3, height, width), dtype=np.float32)
    for i, p in enumerate(paths):
        img = Image.open(p).convert("RGB").resize((width, height), Image.BILINEAR)
        arr = (np.asarray(img, dtype=np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        out[i] = arr.transpose(2, 0, 1)
    return out


def embed_onnx(model_path, paths, batch_size=32):
    """Features [N, 512] float32 of the crops at ``paths`` from an ONNX ReID model (onnxruntime)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ImportError("the real-crop demo needs onnxruntime: pip install 'reidkern[onnx]'") from exc
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    feats = [sess.run(None, {name: load_images(paths[s:s + batch_size])})[0]
             for s in range(0, len(paths), batch_size)]
    return np.concatenate(feats).astype(np.float32)


def mot17_split(paths):
    """Query = each identity's first frame, gallery = the rest; camera id = frame number, as the
    reid-mini README advises (an identity never appears in two MOT17 sequences)."""
    ids = [parse_name(p) for p in paths]
    first = {}
    for i, (pid, _, frame) in enumerate(ids):
        if pid not in first or frame < ids[first[pid]][2]:
            first[pid] = i
    q_idx = sorted(first.values())
    g_idx = [i for i in range(len(paths)) if i not in set(q_idx)]
    pids = np.array([i[0] for i in ids])
    camids = np.array([i[2] for i in ids])
    return q_idx, g_idx, pids, camids


def synthetic_features(num_ids=100, per_id=6, dim=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.nn.functional.normalize(torch.randn(num_ids, dim, generator=g), dim=1)
    pids = torch.arange(num_ids).repeat_interleave(per_id)
    feats = centers[pids] + 0.05 * torch.randn(len(pids), dim, generator=g)
    camids = torch.arange(per_id).repeat(num_ids)
    q = camids == 0
    return feats[q], feats[~q], pids[q], pids[~q], camids[q], camids[~q]


def run(data_dir=None, metric="cosine", log=print):
    """Embeds and evaluates; returns the RankResult. Raises if reidkern disagrees with the reference."""
    t0 = time.perf_counter()
    if data_dir is not None:
        data_dir = Path(data_dir)
        crops = sorted((data_dir / "mot17-crops").glob("*.jpg"))
        model = data_dir / "osnet_x0_25_msmt17.onnx"
        if not crops or not model.exists():
            raise FileNotFoundError(f"{data_dir} lacks mot17-crops/*.jpg or osnet_x0_25_msmt17.onnx")
        log(f"embedding {len(crops)} real crops with {model.name} (onnxruntime)")
        feats = torch.from_numpy(embed_onnx(model, [str(p) for p in crops]))
        q_idx, g_idx, pids, camids = mot17_split(crops)
        qf, gf = feats[q_idx], feats[g_idx]
        q_pids, g_pids = torch.from_numpy(pids[q_idx]), torch.from_numpy(pids[g_idx])
        q_camids, g_camids = torch.from_numpy(camids[q_idx]), torch.from_numpy(camids[g_idx])
        source = "real MOT17 crops, OSNet x0_25 (MSMT17-trained)"
    else:
        qf, gf, q_pids, g_pids, q_camids, g_camids = synthetic_features()
        source = "synthetic identity-clustered features (no data path given)"
    t_embed = time.perf_counter() - t0
    distmat = pairwise_distance(qf, gf, metric)
    t1 = time.perf_counter()
    result = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=10)
    t_eval = time.perf_counter() - t1
    ref_first, ref_ap, _ = evaluate_rank_reference(distmat, q_pids, g_pids, q_camids, g_camids)
    valid = ref_first >= 0
    if not torch.equal(result.first_hit, ref_first) or abs(result.mAP - float(ref_ap[valid].mean())) > 1e-6:
        raise AssertionError("reidkern evaluation disagrees with the float64 reference")
    log(f"{source}: {len(qf)} queries x {len(gf)} gallery, {metric} distance")
    log(result.summary())
    log(f"embedding {t_embed:.2f} s, evaluation {1e3 * t_eval:.2f} ms; equal to the reference")
    return result
