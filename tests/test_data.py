"""Tests for reidkern.data: PIL/torch preprocessing and the Market-1501 folder reader."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from reidkern.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Market1501,
    RandomHorizontalFlip,
    hflip,
    normalize,
    parse_market_name,
    preprocess,
    preprocess_batch,
    read_image_folder,
    reid_mini_dir,
    resize,
    to_tensor,
)


def _img(h=10, w=6, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_to_tensor_and_normalize_values():
    im = _img()
    arr = np.asarray(im)
    t = to_tensor(im)
    assert t.shape == (3, 10, 6) and t.dtype == torch.float32
    torch.testing.assert_close(t[1, 4, 2], torch.tensor(arr[4, 2, 1] / 255.0, dtype=torch.float32))
    n = normalize(t)
    for c in range(3):
        exp = (arr[..., c].astype(np.float64) / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        np.testing.assert_allclose(n[c].numpy(), exp, rtol=1e-5, atol=1e-6)
    nb = normalize(t[None].repeat(2, 1, 1, 1))
    torch.testing.assert_close(nb[1], n)


def test_resize_and_preprocess(tmp_path):
    im = _img(40, 20)
    r = resize(im, (256, 128))
    assert r.size == (128, 256)  # PIL: (width, height)
    p = tmp_path / "0001_c2s1_000123_00.jpg"
    im.save(p, quality=100)
    x = preprocess(p, (32, 16))
    assert x.shape == (3, 32, 16) and x.dtype == torch.float32
    gray = tmp_path / "g.png"
    Image.fromarray(np.full((8, 4), 128, np.uint8)).save(gray)
    g = preprocess(gray, (8, 4))  # mode L -> RGB
    torch.testing.assert_close(g[0], torch.full((8, 4), (128 / 255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]))
    b = preprocess_batch([p, im], (32, 16))
    assert b.shape == (2, 3, 32, 16)


def test_flip():
    x = torch.arange(24.0).reshape(1, 2, 3, 4)
    torch.testing.assert_close(hflip(x)[..., 0], x[..., 3])
    torch.testing.assert_close(hflip(hflip(x)), x)
    assert RandomHorizontalFlip(p=1.0)(x).equal(hflip(x))
    assert RandomHorizontalFlip(p=0.0)(x).equal(x)
    with pytest.raises(ValueError, match="p"):
        RandomHorizontalFlip(p=1.5)


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="size"):
        resize(_img(), (0, 4))
    with pytest.raises(FileNotFoundError):
        preprocess(tmp_path / "missing.jpg")
    with pytest.raises(TypeError, match="image"):
        preprocess(3)
    with pytest.raises(ValueError, match="x"):
        normalize(torch.zeros(4, 8, 8))
    with pytest.raises(ValueError, match="images"):
        preprocess_batch([])


def test_parse_market_name():
    n = parse_market_name("0001_c1s1_001051_00.jpg")
    assert (n.pid, n.camid, n.seq, n.frame, n.index) == (1, 0, 1, 1051, 0)
    n = parse_market_name("/x/-1_c6s3_012345_02.jpg")
    assert (n.pid, n.camid, n.seq) == (-1, 5, 3)
    with pytest.raises(ValueError, match="name"):
        parse_market_name("img_001.jpg")


def _touch(folder, names):
    folder.mkdir(parents=True)
    for n in names:
        _img(8, 4).save(folder / n)


def test_market1501_reader(tmp_path):
    root = tmp_path / "Market-1501-v15.09.15"
    _touch(root / "bounding_box_train", ["0002_c1s1_000451_03.jpg", "0007_c2s3_070952_01.jpg", "0002_c3s1_000551_01.jpg"])
    _touch(root / "query", ["0001_c1s1_001051_00.jpg", "0003_c6s1_002976_01.jpg"])
    _touch(root / "bounding_box_test", ["-1_c1s1_000401_03.jpg", "0000_c1s1_000151_01.jpg", "0001_c6s1_009601_00.jpg"])
    (root / "bounding_box_test" / "Thumbs.db").write_text("x")
    ds = Market1501(str(tmp_path))  # finds the nested folder
    assert [(os.path.basename(r.path), r.pid, r.camid) for r in ds.train] == [
        ("0002_c1s1_000451_03.jpg", 0, 0), ("0002_c3s1_000551_01.jpg", 0, 2), ("0007_c2s3_070952_01.jpg", 1, 1)
    ]
    assert [(r.pid, r.camid) for r in ds.query] == [(1, 0), (3, 5)]
    assert [(r.pid, r.camid) for r in ds.gallery] == [(0, 0), (1, 5)]  # junk -1 dropped, distractor 0 kept
    assert ds.num_train_pids == 2 and ds.num_train_cams == 3
    assert "train" in repr(ds) and "3 images" in repr(ds)
    with pytest.raises(FileNotFoundError, match="bounding_box_train"):
        Market1501(str(tmp_path / "Market-1501-v15.09.15" / "query"))


def test_read_real_folder():
    d = reid_mini_dir()
    if d is None:
        pytest.skip("reid-mini data absent")
    items = read_image_folder(os.path.join(d, "market-samples"))
    assert len(items) == 7
    assert [(r.pid, r.camid) for r in items[:2]] == [(1, 0), (1, 5)]
    x = preprocess(items[0][0])
    assert x.shape == (3, 256, 128)


def test_reid_mini_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("REIDKERN_DATA", str(tmp_path))
    assert reid_mini_dir() == str(tmp_path)
    monkeypatch.setenv("REIDKERN_DATA", str(tmp_path / "nope"))
    assert reid_mini_dir() is None
