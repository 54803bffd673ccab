"""OSNet x0.25: torchreid names, BN folding, and the real ONNX ReID model on real crops."""
import os

import numpy as np
import pytest
import torch

from reidkern.testing import randomize_batchnorm
from reidkern.data import preprocess_batch, reid_mini_dir
from reidkern.models.backbones import osnet_x0_25
from reidkern.models.backbones.osnet_onnx import scope_to_module_name

torch.set_num_threads(2)

DATA = reid_mini_dir()
ONNX = os.path.join(DATA, "osnet_x0_25_msmt17.onnx") if DATA else None
needs_data = pytest.mark.skipif(
    DATA is None or not os.path.isfile(ONNX or ""), reason="reid-mini data (../shared/data/reid-mini or $REIDKERN_DATA) absent"
)


# ---------------------------------------------------------------- structure, no data needed
def test_torchreid_key_names():
    sd = osnet_x0_25(num_classes=10).state_dict()
    expected = {
        "conv1.conv.weight": (16, 3, 7, 7),
        "conv1.bn.running_var": (16,),
        "conv2.0.conv1.conv.weight": (16, 16, 1, 1),
        "conv2.0.conv2a.conv1.weight": (16, 16, 1, 1),
        "conv2.0.conv2a.conv2.weight": (16, 1, 3, 3),
        "conv2.0.conv2a.bn.weight": (16,),
        "conv2.0.conv2d.3.bn.running_mean": (16,),
        "conv2.0.gate.fc1.weight": (1, 16, 1, 1),
        "conv2.0.gate.fc2.bias": (16,),
        "conv2.0.conv3.bn.weight": (64,),
        "conv2.0.downsample.conv.weight": (64, 16, 1, 1),
        "conv2.2.0.conv.weight": (64, 64, 1, 1),
        "conv3.0.downsample.bn.bias": (96,),
        "conv4.1.gate.fc1.weight": (2, 32, 1, 1),
        "conv5.conv.weight": (128, 128, 1, 1),
        "fc.0.weight": (512, 128),
        "fc.1.running_var": (512,),
        "classifier.weight": (10, 512),
    }
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    assert "conv2.1.downsample.conv.weight" not in sd and "conv4.2.0.conv.weight" not in sd
    folded = osnet_x0_25(folded=True).state_dict()
    assert tuple(folded["conv2.0.conv2a.conv2.bias"].shape) == (16,)
    assert not any(".bn." in k for k in folded)


def test_fold_bn_matches_eval_output():
    torch.manual_seed(0)
    m = randomize_batchnorm(osnet_x0_25()).eval()
    f = m.fold_bn().eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(f(x), m(x), rtol=1e-5, atol=1e-5)
        assert m(x).shape == (2, 512) and m.featuremaps(x).shape == (2, 128, 4, 2)
    with pytest.raises(ValueError, match="already folded"):
        f.fold_bn()


def test_torchreid_checkpoint_roundtrip_and_classifier_ignored(tmp_path):
    torch.manual_seed(1)
    a = randomize_batchnorm(osnet_x0_25(num_classes=7), 1).eval()
    p = tmp_path / "osnet_x0_25_market.pth"
    # torchreid's checkpoint layout: the state_dict (with the training classifier) beside
    # other entries; the classifier is ignored by a feature extractor without one
    torch.save({"state_dict": a.state_dict(), "epoch": 60, "rank1": 0.9}, p)
    b = osnet_x0_25(weights=p)
    assert not b.training and b.classifier is None
    assert b.load_weights(p).ignored_keys == ["classifier.bias", "classifier.weight"]
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)


def test_scope_names():
    assert scope_to_module_name("/conv1/conv/Conv") == "conv1.conv"
    assert scope_to_module_name("/conv2/conv2.0/conv2b/conv2b.1/conv2/Conv") == "conv2.0.conv2b.1.conv2"
    assert scope_to_module_name("/conv3/conv3.2/conv3.2.0/conv/Conv") == "conv3.2.0.conv"


def test_missing_onnx_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        osnet_x0_25(weights=tmp_path / "none.onnx")


# ---------------------------------------------------------------- the real model on real crops
def _reference_rank1_map(distmat, q_pids, g_pids, q_camids, g_camids):
    """Plain float64 Market-protocol evaluation, written independently of reidkern."""
    r1, aps = [], []
    for i in range(distmat.shape[0]):
        cand = [j for j in range(distmat.shape[1]) if not (g_pids[j] == q_pids[i] and g_camids[j] == q_camids[i])]
        cand.sort(key=lambda j: (float(distmat[i, j]), j))
        good = [g_pids[j] == q_pids[i] for j in cand]
        if not any(good):
            continue
        r1.append(1.0 if good[0] else 0.0)
        hits, precisions = 0, []
        for rank, ok in enumerate(good, start=1):
            if ok:
                hits += 1
                precisions.append(hits / rank)
        aps.append(sum(precisions) / len(precisions))
    return sum(r1) / len(r1), sum(aps) / len(aps)


@pytest.fixture(scope="module")
def real_features():
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from reidkern.demo import osnet_on_crops

    folder = os.path.join(DATA, "mot17-crops")
    paths = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".jpg"))
    model = osnet_x0_25(ONNX)
    model64 = osnet_x0_25(ONNX).double()
    sess = ort.InferenceSession(ONNX, providers=["CPUExecutionProvider"])
    ours, theirs, exact = [], [], []
    with torch.no_grad():
        for i in range(0, len(paths), 64):
            x = preprocess_batch(paths[i:i + 64])
            ours.append(model(x))
            theirs.append(torch.from_numpy(sess.run(None, {"images": x.numpy()})[0]))
            exact.append(model64(x.double()))
    demo = osnet_on_crops(DATA, limit=12, model=model)
    return paths, torch.cat(ours), torch.cat(theirs), demo, torch.cat(exact)


@needs_data
def test_osnet_equals_onnxruntime_on_real_crops(real_features):
    paths, ours, theirs, _, exact = real_features
    assert ours.shape == (len(paths), 512) and len(paths) == 482
    # float32 rounding grows with the size of a feature vector's activations (up to ~20 here):
    # both runtimes stay within 5e-5 of each row's largest value of a float64 run of the same
    # weights (measured: ours 2.0e-5, onnxruntime 7.8e-6), and so within 1e-4 of each other.
    scale = exact.abs().amax(dim=1, keepdim=True)
    assert ((ours.double() - exact).abs() / scale).max() < 5e-5
    assert ((theirs.double() - exact).abs() / scale).max() < 5e-5
    assert ((ours.double() - theirs.double()).abs() / scale).max() < 1e-4
    unit = torch.nn.functional.normalize
    torch.testing.assert_close(unit(ours, dim=1), unit(theirs, dim=1), rtol=0, atol=1e-5)
    assert theirs.abs().max() > 1.0  # real, non-trivial features


@needs_data
def test_demo_features_rank1_map(real_features):
    from reidkern.demo import query_gallery_split
    from reidkern.metrics import evaluate_rank, pairwise_distance

    paths, ours, _, demo, _ = real_features
    assert demo.paths == paths[:12]
    torch.testing.assert_close(demo.features, ours[:12], rtol=1e-5, atol=1e-5)
    pids = torch.tensor([int(os.path.basename(p)[:4]) for p in paths])
    frames = torch.tensor([int(os.path.basename(p).split("_")[2]) for p in paths])
    q, g = query_gallery_split(pids, frames)
    assert len(q) == 86 and len(q) + len(g) == 482
    dist = pairwise_distance(ours[q].double(), ours[g].double(), "cosine")
    # camera id = frame number (README caveat): no query loses its positives
    ref = _reference_rank1_map(dist.numpy(), pids[q].tolist(), pids[g].tolist(), frames[q].tolist(), frames[g].tolist())
    res = evaluate_rank(dist, pids[q], pids[g], frames[q], frames[g], max_rank=1)
    got = (res.rank(1), res.mAP)
    print(f"\nOSNet x0.25 on mot17-crops: rank-1 {100 * ref[0]:.2f}%  mAP {100 * ref[1]:.2f}%")
    assert got == pytest.approx(ref, abs=1e-12)
    assert ref[0] > 0.9 and ref[1] > 0.8  # a trained ReID model on near-duplicate frames


@needs_data
def test_market_samples_similarity():
    pytest.importorskip("onnx")
    from reidkern.demo import osnet_on_crops

    out = osnet_on_crops(DATA, subset="market-samples")
    f = torch.nn.functional.normalize(out.features, dim=1)
    sim = f @ f.t()
    same = [(i, j) for i in range(len(f)) for j in range(i + 1, len(f)) if out.pids[i] == out.pids[j]]
    assert len(same) == 1 and out.camids[same[0][0]] != out.camids[same[0][1]]  # id 0001, cams 1 and 6
    diff = np.mean([sim[i, j].item() for i in range(len(f)) for j in range(i + 1, len(f)) if (i, j) not in same])
    s = sim[same[0]].item()
    assert s > 0.75 and diff < 0.6 and s > diff + 0.2  # README: ~0.83 vs ~0.48


@needs_data
def test_onnx_needs_folded_model():
    pytest.importorskip("onnx")
    with pytest.raises(ValueError, match="folded=True"):
        osnet_x0_25(ONNX, folded=False)
