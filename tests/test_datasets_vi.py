"""SYSU-MM01 and RegDB readers on release-layout trees (real crops)."""
import os
import random

import numpy as np
import pytest

from reidkern.data import INFRARED, VISIBLE, build_dataset

from _data_trees import link_tree, real_crops, write


def _sysu(root, crops, n=3):
    files = []
    for pid in (1, 2, 3, 5, 7):
        for cam in range(1, 7):
            if pid == 7 and cam == 2:
                continue  # not every id is seen by every camera
            files += [f"cam{cam}/{pid:04d}/{k:04d}.jpg" for k in range(1, n + 1)]
    link_tree(str(root), files, crops)
    write(str(root), "exp/train_id.txt", "1,2")
    write(str(root), "exp/val_id.txt", "3")
    write(str(root), "exp/test_id.txt", "5,7\n")


def test_sysu_layout_and_agw_trials(tmp_path):
    root = tmp_path / "SYSU-MM01"
    _sysu(root, real_crops(6))
    ds = build_dataset("sysu_mm01", str(tmp_path), mode="all")
    assert ds.num_train_pids == 3 and ds.num_train_cams == 6
    assert {r.modality for r in ds.train if r.camid in (2, 5)} == {INFRARED}
    assert {r.modality for r in ds.train if r.camid not in (2, 5)} == {VISIBLE}
    assert {(r.pid, r.camid) for r in ds.query} == {(5, 2), (5, 5), (7, 2), (7, 5)} and len(ds.query) == 12
    # single-shot: one image per (id, visible camera); AGW's seeded draw
    assert sorted((r.pid, r.camid) for r in ds.gallery) == [(5, 0), (5, 1), (5, 3), (5, 4), (7, 0), (7, 3), (7, 4)]
    rng = random.Random(0)
    expect = []
    for pid in (5, 7):
        for cam in (1, 2, 4, 5):
            d = root / f"cam{cam}" / f"{pid:04d}"
            if d.is_dir():
                expect.append(str(d / rng.choice(sorted(os.listdir(d)))))
    assert [r.path for r in ds.gallery] == expect
    trials = ds.gallery_trials(10)
    assert len(trials) == 10 and len({tuple(t) for t in trials}) > 1
    assert [ds.gallery_pool[i].path for i in trials[0]] == expect
    indoor = build_dataset("sysu", str(root), mode="indoor", shots=10)
    assert {r.camid for r in indoor.gallery} == {0, 1} and len(indoor.gallery) == 3 * 3


def test_sysu_official_split(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    root = tmp_path / "SYSU-MM01"
    _sysu(root, real_crops(6))
    cams = np.empty((6, 1), dtype=object)
    for c in range(6):
        people = np.empty((7, 1), dtype=object)
        for p in range(7):
            people[p, 0] = np.array([np.roll([1.0, 2.0, 3.0], t) for t in range(10)])
        cams[c, 0] = people
    scipy_io.savemat(str(root / "exp" / "rand_perm_cam.mat"), {"rand_perm_cam": cams})
    ds = build_dataset("sysu_mm01", str(root), trial=1)  # auto → official
    assert ds.official
    assert all(r.path.endswith("0003.jpg") for r in ds.gallery)  # np.roll([1,2,3], 1)[0] == 3
    agw = build_dataset("sysu_mm01", str(root), gallery_split="agw")
    assert not agw.official


def test_sysu_missing_files(tmp_path):
    root = tmp_path / "SYSU-MM01"
    _sysu(root, real_crops(2), n=1)
    os.remove(root / "exp" / "val_id.txt")
    with pytest.raises(FileNotFoundError, match="val_id.txt"):
        build_dataset("sysu_mm01", str(root))
    with pytest.raises(ValueError, match="mode"):
        build_dataset("sysu_mm01", str(root), mode="outdoor")
    with pytest.raises(FileNotFoundError, match="rand_perm_cam.mat"):
        build_dataset("sysu_mm01", str(root), gallery_split="official")


def _regdb(root, crops):
    files = []
    for t in (1, 2):
        for split, ids in (("train", (1, 2)), ("test", (3, 4))):
            for mod in ("Visible", "Thermal"):
                lines = []
                for pid in ids:
                    for k in range(2):
                        rel = f"{mod}/female/{pid}_{mod[0]}_{k}.bmp"
                        files.append(rel)
                        lines.append(f"{rel} {pid - 1 if split == 'train' else pid + 200}")
                write(str(root), f"idx/{split}_{mod.lower()}_{t}.txt", "\n".join(lines) + "\n")
    link_tree(str(root), sorted(set(files)), crops)


def test_regdb_trials_and_directions(tmp_path):
    root = tmp_path / "RegDB"
    _regdb(root, real_crops(4))
    v2t = build_dataset("regdb", str(tmp_path), trial=2)
    assert v2t.num_train_pids == 2 and len(v2t.train) == 8
    assert {r.modality for r in v2t.query} == {VISIBLE} and {r.modality for r in v2t.gallery} == {INFRARED}
    assert {r.camid for r in v2t.gallery} == {1} and {r.pid for r in v2t.query} == {203, 204}
    t2v = build_dataset("regdb", str(root), trial=2, mode="thermal_to_visible")
    assert {r.modality for r in t2v.query} == {INFRARED}
    with pytest.raises(FileNotFoundError, match="train_visible_3.txt"):
        build_dataset("regdb", str(root), trial=3)
    with pytest.raises(ValueError, match="trial"):
        build_dataset("regdb", str(root), trial=11)


def test_sysu_reader_feeds_the_protocol(tmp_path):
    import torch

    from reidkern.metrics.protocols import evaluate_sysu_mm01

    root = tmp_path / "SYSU-MM01"
    _sysu(root, real_crops(6))
    ds = build_dataset("sysu_mm01", str(root))
    g = torch.Generator().manual_seed(0)
    qf, gf = torch.randn(len(ds.query), 8, generator=g), torch.randn(len(ds.gallery_pool), 8, generator=g)
    pid = lambda rs: [r.pid for r in rs]  # noqa: E731
    cam = lambda rs: [r.camid for r in rs]  # noqa: E731
    out = evaluate_sysu_mm01(qf, gf, pid(ds.query), pid(ds.gallery_pool), cam(ds.query), cam(ds.gallery_pool),
                             trials=ds.gallery_trials(10), max_rank=2)
    assert len(out.trials) == 10 and 0 <= out.mean["mAP"] <= 1 and "R1" in out.mean
