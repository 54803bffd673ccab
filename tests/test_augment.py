"""Training/test pipelines and the ImageDataset items."""
import numpy as np
import pytest
import torch
from PIL import Image

from reidkern.data import ImageDataset, Record, build_transforms, preprocess
from reidkern.data.augment import ChannelAdapGray, ChannelExchange, PadCrop, RandomErasing


def _save(path, h=40, w=20, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_test_pipeline_matches_preprocess(tmp_path):
    p = _save(tmp_path / "a.png")
    t = build_transforms(32, 16, train=False)
    torch.testing.assert_close(t(p), preprocess(p, (32, 16)))


def test_train_pipeline_shapes_and_randomness(tmp_path):
    p = _save(tmp_path / "a.png")
    t = build_transforms(32, 16, train=True, channel_aug=True)
    torch.manual_seed(0)
    a = t(p)
    torch.manual_seed(0)
    assert torch.equal(a, t(p))
    assert a.shape == (3, 32, 16) and a.dtype == torch.float32
    assert not torch.equal(a, t(p))


def test_pad_crop_is_a_shifted_window():
    x = torch.arange(3 * 6 * 4, dtype=torch.float32).view(3, 6, 4) + 1
    g = torch.Generator().manual_seed(1)
    y = PadCrop(2, generator=g)(x)
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2))
    hits = [(t, l) for t in range(5) for l in range(5) if torch.equal(xp[:, t:t + 6, l:l + 4], y)]
    assert hits


def test_random_erasing_fills_a_rectangle():
    x = torch.zeros(3, 64, 32)
    y = RandomErasing(p=1.0, value=(1.0, 2.0, 3.0), generator=torch.Generator().manual_seed(0))(x)
    mask = y[0] != 0
    rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
    area = int(mask.sum())
    assert area == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert 0.02 * 64 * 32 * 0.5 <= area <= 0.4 * 64 * 32 * 1.5
    assert torch.equal(y[2][mask], torch.full((area,), 3.0))
    assert torch.equal(RandomErasing(p=0.0)(x), x)


def test_channel_augmentations():
    x = torch.rand(3, 4, 5)
    for seed in range(6):
        y = ChannelExchange(2, torch.Generator().manual_seed(seed))(x)
        assert any(torch.equal(y, x[c:c + 1].expand(3, 4, 5)) for c in range(3))
        z = ChannelAdapGray(1.0, torch.Generator().manual_seed(seed))(x)
        gray = 0.2989 * x[0] + 0.587 * x[1] + 0.114 * x[2]
        assert torch.equal(z[0], z[1]) and torch.equal(z[1], z[2])
        assert any(torch.allclose(z[0], c) for c in (x[0], x[1], x[2], gray))


def test_bad_transform_arguments():
    with pytest.raises(ValueError, match="height"):
        build_transforms(0, 16, train=True)
    with pytest.raises(ValueError, match="random_erasing"):
        build_transforms(8, 4, train=True, random_erasing=1.5)
    with pytest.raises(ValueError, match="pad"):
        build_transforms(8, 4, train=True, pad=-1)


def test_image_dataset_items_collate(tmp_path):
    recs = [Record(_save(tmp_path / f"{i}.jpg", seed=i), i // 2, i % 2, i % 2) for i in range(4)]
    ds = ImageDataset(recs, {0: build_transforms(16, 8, False), 1: build_transforms(16, 8, True, channel_aug=True, modality=1)})
    item = ds[3]
    assert set(item) == {"img", "pid", "camid", "modality", "index"}
    assert (item["pid"], item["camid"], item["modality"], item["index"]) == (1, 1, 1, 3)
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    assert batch["img"].shape == (4, 3, 16, 8)
    for k in ("pid", "camid", "modality", "index"):
        assert batch[k].dtype == torch.int64 and batch[k].shape == (4,)


def test_image_dataset_bad_input(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    ds = ImageDataset([Record(str(bad), 0, 0)], build_transforms(16, 8, False))
    with pytest.raises(ValueError, match="broken.jpg"):
        ds[0]
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        ImageDataset([("gone.jpg", 0, 0)], build_transforms(16, 8, False))[0]
    with pytest.raises(TypeError, match="transform"):
        ImageDataset([], 3)
