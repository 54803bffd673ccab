"""evaluate_rank on real ReID features: OSNet x0_25 (MSMT17) embeddings of real MOT17 crops."""
import numpy as np
import pytest
import torch

from reidkern import demo
from reidkern.data.market1501 import parse_market_name
from reidkern.metrics import evaluate_features, evaluate_rank, pairwise_distance
from reidkern.ops.reference.evaluate_rank import evaluate_rank_reference
from reidkern.testing import backends_for


@pytest.fixture(scope="module")
def real_features(reid_mini):
    pytest.importorskip("onnxruntime")
    crops = sorted(str(p) for p in (reid_mini / "mot17-crops").glob("*.jpg"))[:160]
    feats = torch.from_numpy(demo.embed_onnx(reid_mini / "osnet_x0_25_msmt17.onnx", crops))
    names = [parse_market_name(p) for p in crops]
    pids = torch.tensor([n.pid for n in names])
    frames = torch.tensor([n.frame for n in names])  # camera id = frame (reid-mini README)
    q, g = demo.query_gallery_split(pids, frames)
    return feats[q], feats[g], pids[q], pids[g], frames[q], frames[g]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("backend", backends_for("cpu"))
def test_real_features_match_reference(real_features, metric, backend):
    qf, gf, qp, gp, qc, gc = real_features
    assert qf.shape[1] == 512 and len(qf) > 10
    distmat = pairwise_distance(qf, gf, metric)
    r = evaluate_rank(distmat, qp, gp, qc, gc, max_rank=10, backend=backend)
    fh, ap, inp = evaluate_rank_reference(distmat, qp, gp, qc, gc)
    valid = fh >= 0
    assert torch.equal(r.first_hit, fh)
    assert abs(r.mAP - float(ap[valid].mean())) < 1e-6
    assert abs(r.mINP - float(inp[valid].mean())) < 1e-6
    # A ReID-trained model separates these identities: far above chance.
    assert r.rank(1) > 0.5
    rf = evaluate_features(qf, gf, qp, gp, qc, gc, metric=metric, max_rank=10, tile_rows=7,
                           backend=backend, progress=False)
    assert torch.equal(rf.first_hit, fh)


def test_cli_eval_on_npz(tmp_path, capsys):
    from reidkern.cli import main

    g = np.random.default_rng(0)
    centers = g.normal(size=(10, 16))
    pids = np.repeat(np.arange(10), 4)
    feats = (centers[pids] + 0.1 * g.normal(size=(40, 16))).astype(np.float32)
    camids = np.tile(np.arange(4), 10)
    q = camids == 0
    np.savez(tmp_path / "q.npz", feats=feats[q], pids=pids[q], camids=camids[q])
    np.savez(tmp_path / "g.npz", feats=feats[~q], pids=pids[~q], camids=camids[~q])
    assert main(["eval", "--query", str(tmp_path / "q.npz"), "--gallery", str(tmp_path / "g.npz")]) == 0
    out = capsys.readouterr().out
    assert "Rank-1" in out and "mAP" in out and "mINP" in out and "time" in out
    assert main(["eval", "--query", str(tmp_path / "q.npz"), "--gallery", str(tmp_path / "g.npz"),
                 "--rerank", "--k1", "5", "--k2", "2", "--max-rank", "5"]) == 0
    assert "k-reciprocal" in capsys.readouterr().out
    np.savez(tmp_path / "bad.npz", feats=feats)
    capsys.readouterr()
    assert main(["eval", "--query", str(tmp_path / "bad.npz"), "--gallery", str(tmp_path / "g.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("reidkern eval: ") and "lacks" in err and err.count("\n") == 1


def test_demo_runs_on_synthetic_features():
    lines = []
    result = demo.run(None, log=lines.append)
    assert result.rank(1) > 0.9
    assert result.num_valid_queries == 100
    assert any("synthetic" in line for line in lines)


def test_demo_on_real_crops(reid_mini):
    pytest.importorskip("onnx")
    lines = []
    result = demo.run(reid_mini, log=lines.append)
    assert result.num_valid_queries > 50
    assert any("onnxruntime" in line for line in lines)
