"""Validation split carved from the training identities."""
import pytest

from reidkern.data import Record, carve_validation


def _recs(cams_per_pid, n=4):
    return [Record(f"{p}_{i}", 10 * p + 1, i % c) for p, c in enumerate(cams_per_pid) for i in range(n)]


def test_carve_validation_disjoint_one_query_per_camera():
    recs = _recs([3, 2, 1, 3, 2, 2, 1])
    train, q, g = carve_validation(recs, 3, seed=0)
    val = {r.pid for r in q}
    assert val == {r.pid for r in g} and len(val) == 3
    orig_train = {r.pid for r in recs} - val
    assert sorted({r.pid for r in train}) == list(range(len(orig_train)))
    assert len(train) + len(q) + len(g) == len(recs)
    for pid in val:
        cams = {r.camid for r in recs if r.pid == pid}
        assert len(cams) >= 2  # only multi-camera ids are drawn here
        assert sorted(r.camid for r in q if r.pid == pid) == sorted(cams)
    assert carve_validation(recs, 3, seed=0) == (train, q, g)
    assert carve_validation(recs, 3, seed=1) != (train, q, g)


def test_carve_validation_single_camera():
    recs = [Record(f"{p}_{i}", p, 0) for p in range(5) for i in range(3)]
    train, q, g = carve_validation(recs, 2)
    assert len(q) == 2 and len(g) == 4 and {r.camid for r in q + g} == {-1}


def test_carve_validation_bad_arguments():
    with pytest.raises(ValueError, match="num_val_pids"):
        carve_validation(_recs([2, 2]), 0)
    with pytest.raises(ValueError, match="num_val_pids: 2 is not fewer than the 2"):
        carve_validation(_recs([2, 2]), 2)


def test_carve_validation_keeps_a_gallery_image_of_every_id():
    """Ids with exactly one image per camera give one image to the gallery (all-query ids made
    the validation evaluation fail: query identities absent from the gallery)."""
    from reidkern.metrics.protocols import evaluate_image_reid
    import torch
    recs = [Record(f"{p}_{i}", p, i) for p in range(6) for i in range(3)]  # 3 images, 3 cameras
    for seed in range(4):
        _, q, g = carve_validation(recs, 3, seed=seed)
        for pid in {r.pid for r in q}:
            assert sum(r.pid == pid for r in q) == 2 and sum(r.pid == pid for r in g) == 1
        feats = torch.randn(len(q) + len(g), 8)
        res = evaluate_image_reid(feats[:len(q)], feats[len(q):], torch.tensor([r.pid for r in q]),
                                  torch.tensor([r.pid for r in g]), torch.tensor([r.camid for r in q]),
                                  torch.tensor([r.camid for r in g]), metric="cosine")
        assert 0 <= float(res.mAP) <= 1
