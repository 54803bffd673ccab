"""reidkern eval --dataset / reidkern.zero_shot on a Market-layout tree of real crops."""
import os

import numpy as np
import pytest

from reidkern.cli import main
from reidkern.data.paths import reid_mini_dir, shared_data_dir


def _tree(tmp_path):
    """A Market-layout tree of 3 Con-ReID identities (real crops): 1 train, 1 query, 3 gallery each."""
    pytest.importorskip("onnx")
    mini, con = reid_mini_dir(), shared_data_dir("con-reid")
    if mini is None or con is None:
        pytest.skip("../shared/data/reid-mini or con-reid not found")
    src = os.path.join(con, "bounding_box_test")
    names = sorted(os.listdir(src))
    by_pid = {}
    for n in names:
        by_pid.setdefault(n[:4], []).append(n)
    root = tmp_path / "tree"
    for split, pick in (("bounding_box_train", lambda fs: fs[:1]), ("query", lambda fs: fs[:1]),
                        ("bounding_box_test", lambda fs: fs[1:4])):
        (root / split).mkdir(parents=True)
        for pid in list(by_pid)[:3]:
            for n in pick(by_pid[pid]):
                os.symlink(os.path.join(src, n), root / split / n)
    return root, by_pid, os.path.join(mini, "osnet_x0_25_msmt17.onnx")


def test_demo_dataset(tmp_path):
    from reidkern import demo

    root, _, _ = _tree(tmp_path)
    lines = []
    out = demo.run_dataset("con-reid", root=str(root), log=lines.append)
    assert out.query.feats.shape == (3, 512)
    assert out.gallery.feats.shape == (len(os.listdir(root / "bounding_box_test")), 512)
    assert any("mAP" in line for line in lines) and 0 < out.result.mAP <= 1


def test_eval_dataset_cli(tmp_path, capsys):
    root, by_pid, onnx = _tree(tmp_path)
    out = tmp_path / "feats"
    assert main(["eval", "--dataset", "con-reid", "--data", str(root), "--weights", onnx, "--metric", "cosine",
                 "--save-features", str(out), "--batch-size", "4"]) == 0
    text = capsys.readouterr().out
    assert "Rank-1" in text and "mAP" in text and "query" in text
    with np.load(out / "query.npz") as q:
        assert q["feats"].shape == (3, 512) and q["pids"].tolist() == sorted(int(p) for p in list(by_pid)[:3])
    # the saved features evaluate the same way through the npz path
    assert main(["eval", "--query", str(out / "query.npz"), "--gallery", str(out / "gallery.npz"),
                 "--metric", "cosine"]) == 0
    assert capsys.readouterr().out.split("Rank-1")[1].split()[0] == text.split("Rank-1")[1].split()[0]
    assert main(["eval", "--dataset", "con-reid", "--data", str(root)]) == 2
    assert "--weights" in capsys.readouterr().err
