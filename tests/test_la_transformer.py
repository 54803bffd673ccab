"""LA-Transformer (reidkern.models.LATransformer): equal to its eager twin (the official head's
per-part loops) in float64, the batched ClassBlocks, parameter count of the official structure,
official checkpoints, test features, torch.compile, ONNX, bad input. Small ViTs on 32×32 images."""
import math

import pytest
import torch
from torch import nn

from reidkern.models.dpti import DPTI
from reidkern.models.la_transformer import LATransformer, official_parameter_count
from reidkern.models.la_transformer_eager import LATransformerEager
from reidkern.nn.classifiers import PartClassBlocks
from reidkern.testing import assert_close, check_compiled_train_forward

TOL = dict(rtol=1e-9, atol=1e-11)


def tiny(**kw):
    cfg = dict(num_classes=5, img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2)
    cfg.update(kw)
    return LATransformer(**cfg)


def batch(b=8, h=32, w=32, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, h, w, generator=g, dtype=dtype), torch.arange(b // 2).repeat_interleave(2)


FLAGS = {"official": {}, "y_pooling": dict(y_pooling=True), "metric_loss": dict(metric_loss=True),
         "improved": dict(y_pooling=True, metric_loss=True, lmbd=2.5)}


@pytest.mark.parametrize("flags", list(FLAGS))
def test_train_step_matches_eager_twin_float64(flags):
    torch.manual_seed(0)
    model = tiny(dropout=0.0, **FLAGS[flags]).double()  # dropout masks differ in draw order
    twin = LATransformerEager(model)
    x, pids = batch()
    out, out_ref = model(x), twin(x)
    loss, logs = model.loss(out, pids)
    loss_ref, logs_ref = twin.loss(out_ref, pids)
    for k in out_ref:
        assert_close(out[k], out_ref[k], **TOL)
    for k in logs_ref:
        assert_close(logs[k], logs_ref[k], **TOL)
    names, params = zip(*model.named_parameters())
    grads = dict(zip(names, torch.autograd.grad(loss, params)))
    grads_ref = twin.stacked_grads(torch.autograd.grad(loss_ref, twin.head_parameters()))
    assert set(grads_ref) == set(grads)
    for k in names:
        assert_close(grads[k], grads_ref[k], rtol=1e-8, atol=1e-10, msg=k)
    # the running statistics moved the same way (twin and model updated the same buffers once each)
    assert model.classifiers.bn_running_mean.abs().sum() > 0


@pytest.mark.parametrize("img_size,flags", [(24, dict(y_pooling=True, metric_loss=True, lmbd=3.0)),
                                            ((40, 24), dict(metric_loss=True))])
def test_train_step_matches_eager_twin_odd_sizes(img_size, flags):
    # a 3x3 grid (improved) and a non-square 5x3 one, odd widths, batch 6 with a singleton identity
    torch.manual_seed(3)
    model = tiny(num_classes=7, img_size=img_size, embed_dim=10, num_heads=2, depth=1, bottleneck_dim=5,
                 dropout=0.0, **flags).double()
    twin = LATransformerEager(model)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 3, *model.img_size, generator=g, dtype=torch.float64)
    pids = torch.tensor([0, 0, 1, 1, 1, 2])
    loss, _ = model.loss(model(x), pids)
    loss_ref, _ = twin.loss(twin(x), pids)
    assert_close(loss, loss_ref, **TOL)
    names, params = zip(*model.named_parameters())
    grads = dict(zip(names, torch.autograd.grad(loss, params)))
    grads_ref = twin.stacked_grads(torch.autograd.grad(loss_ref, twin.head_parameters()))
    for k in names:
        assert_close(grads[k], grads_ref[k], rtol=1e-8, atol=1e-10, msg=k)


def test_twin_blocks_share_the_models_storage():
    model = tiny()
    twin = LATransformerEager(model)
    with torch.no_grad():
        model.classifiers.fc2_weight[2, 1, 3] = 7.0
    assert twin.classifier2[3].weight[1, 3] == 7.0
    assert twin.classifier1[1].running_var.data_ptr() == model.classifiers.bn_running_var[1].data_ptr()
    with pytest.raises(TypeError, match="LATransformer"):
        LATransformerEager(nn.Linear(2, 2))


@pytest.mark.parametrize("flags", ["official", "improved"])
def test_eval_features_match_official_formula(flags):
    torch.manual_seed(1)
    model = tiny(**FLAGS[flags]).double().eval()
    x, _ = batch(b=3)
    f = model(x)
    assert f.shape == (3, 4 * 16) and model.feature_dim == 64
    assert_close(f, LATransformerEager(model)(x), **TOL)
    # per part: norm 1/sqrt(P); overall: unit norm
    assert_close(f.view(3, 4, 16).norm(dim=-1), torch.full((3, 4), 1 / math.sqrt(4), dtype=torch.float64))
    model.test_gelt = True
    assert_close(model(x), LATransformerEager(model)(x), **TOL)


def test_part_class_blocks_equal_separate_class_blocks():
    torch.manual_seed(2)
    P, D, K, C = 3, 12, 8, 5
    blocks = PartClassBlocks(P, D, K, C, dropout=0.0).double()
    seq = [nn.Sequential(nn.Linear(D, K), nn.BatchNorm1d(K), nn.Dropout(0.0), nn.Linear(K, C)).double()
           for _ in range(P)]
    with torch.no_grad():
        for i, s in enumerate(seq):
            s[0].weight.copy_(blocks.fc1_weight[i]), s[0].bias.copy_(blocks.fc1_bias[i])
            s[1].weight.copy_(blocks.bn_weight[i]), s[1].bias.copy_(blocks.bn_bias[i])
            s[3].weight.copy_(blocks.fc2_weight[i]), s[3].bias.copy_(blocks.fc2_bias[i])
    x = torch.randn(6, P, D, dtype=torch.float64)
    for mode in ("train", "eval"):
        for m in [blocks] + seq:
            m.train(mode == "train")
        logits, _ = blocks(x)
        for i, s in enumerate(seq):
            assert_close(logits[:, i], s(x[:, i]), **TOL)
            assert_close(blocks.bn_running_mean[i], s[1].running_mean, **TOL)
            assert_close(blocks.bn_running_var[i], s[1].running_var, **TOL)
    with pytest.raises(ValueError, match=r"x: expected \[B, 3, 12\]"):
        blocks(torch.randn(2, 4, D, dtype=torch.float64))


def test_parameter_count_equals_official_structure():
    # official: timm vit_base_patch16_224(num_classes=751) + 14 ClassBlocks; the official training
    # notebook prints 91,841,537 trainable parameters once every block is unfrozen
    assert official_parameter_count(751) == 91_841_537
    with torch.device("meta"):
        model = LATransformer(751)
    n = sum(p.numel() for p in model.parameters())
    # reidkern builds no timm head (the official forward never calls it): 768·751 + 751 fewer
    assert n == official_parameter_count(751, with_head=False) == 91_841_537 - (768 * 751 + 751) == 91_264_018
    # a model's own counts agree with the formula at another size too
    small = tiny(num_classes=7)
    assert sum(p.numel() for p in small.parameters()) == official_parameter_count(
        7, num_parts=4, embed_dim=16, depth=2, patches=16, patch_size=8, with_head=False)


def _official_state_dict(model):
    """model's parameters under the official code's names (LATransformer(timm ViT) module tree)."""
    sd = {f"model.{k}": v for k, v in model.backbone.state_dict().items()}
    sd["model.head.weight"] = torch.zeros(model.num_classes, model.embed_dim)
    sd["model.head.bias"] = torch.zeros(model.num_classes)
    sd["cls_token"], sd["pos_embed"] = sd["model.cls_token"], sd["model.pos_embed"]
    c = model.classifiers.state_dict()
    for i in range(model.num_parts):
        sd[f"classifier{i}.add_block.0.weight"] = c["fc1_weight"][i]
        sd[f"classifier{i}.add_block.0.bias"] = c["fc1_bias"][i]
        sd[f"classifier{i}.add_block.1.weight"] = c["bn_weight"][i]
        sd[f"classifier{i}.add_block.1.bias"] = c["bn_bias"][i]
        sd[f"classifier{i}.add_block.1.running_mean"] = c["bn_running_mean"][i] + 0.1
        sd[f"classifier{i}.add_block.1.running_var"] = c["bn_running_var"][i] + 0.5
        sd[f"classifier{i}.add_block.1.num_batches_tracked"] = torch.tensor(3)
        sd[f"classifier{i}.classifier.0.weight"] = c["fc2_weight"][i]
        sd[f"classifier{i}.classifier.0.bias"] = c["fc2_bias"][i]
    return sd


def test_load_official_timm_own_and_foreign_checkpoints():
    torch.manual_seed(3)
    src, dst = tiny(), tiny()
    sd = _official_state_dict(src)
    dst.load_weights(sd)
    x, _ = batch(b=2, dtype=torch.float32)
    src.eval(), dst.eval()
    torch.testing.assert_close(dst(x), src(x))
    assert torch.equal(dst.classifiers.bn_running_mean[1], sd["classifier1.add_block.1.running_mean"])
    dst.load_weights(src.state_dict())  # reidkern's own
    vit = tiny().backbone.state_dict()  # a timm-layout ViT: backbone only
    assert dst.load_weights(vit).ok and torch.equal(dst.backbone.pos_embed, vit["pos_embed"])
    with pytest.raises(ValueError, match="weights: not a LA-Transformer checkpoint"):
        dst.load_weights(DPTI(5, num_parts=2, dim=8, mid_stage="layer1", final_stage="layer1",
                              part_heads=2).state_dict())


def test_checkpoint_of_another_number_of_identities_skips_only_the_classifiers():
    """Fine-tuning from a checkpoint of another dataset: the ClassBlocks' last Linear keeps its
    fresh initialisation and is reported; every other tensor is loaded; other mismatches raise."""
    torch.manual_seed(5)
    src, dst = tiny(num_classes=7), tiny()
    fresh = {k: v.clone() for k, v in dst.state_dict().items()}
    heads = ["classifiers.fc2_bias", "classifiers.fc2_weight"]
    for sd in (src.state_dict(), _official_state_dict(src)):  # reidkern's and the official layout
        ref = tiny(num_classes=7)
        assert not ref.load_weights(sd).skipped_keys  # same identities: nothing skipped
        dst.load_state_dict(fresh)
        with pytest.warns(UserWarning, match=r"another number of identities[\s\S]*classifiers\.fc2_weight"):
            res = dst.load_weights(sd)
        assert res.ok and [k for k, _, _ in res.skipped_keys] == heads
        assert {k: (c, m) for k, c, m in res.skipped_keys}["classifiers.fc2_weight"] == ((4, 7, 256), (4, 5, 256))
        for k, v in dst.state_dict().items():
            assert torch.equal(v, fresh[k] if k in heads else ref.state_dict()[k]), k
    # anything else that differs still raises, even alongside a skippable classifier
    with pytest.raises(ValueError, match=r"weights do not match LATransformer[\s\S]*fc1_weight"):
        dst.load_weights(tiny(num_classes=7, bottleneck_dim=32).state_dict())
    with pytest.raises(ValueError, match=r"weights do not match LATransformer[\s\S]*backbone\.blocks\.0\.attn\.qkv\.weight"):
        dst.load_weights(tiny(num_classes=7, embed_dim=24).state_dict())
    with pytest.raises(ValueError, match="weights: not a LA-Transformer checkpoint"):
        dst.load_weights(DPTI(7, num_parts=2, dim=8, mid_stage="layer1", final_stage="layer1",
                              part_heads=2).state_dict())


def test_extract_flip():
    model = tiny(flip_test=True)
    x, _ = batch(b=2, dtype=torch.float32)
    f = model.extract(x)
    assert model.training
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(f, (model(x) + model(x.flip(-1))) / 2)
        torch.testing.assert_close(model.extract(x, flip=False), model(x))


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="num_classes"):
        tiny(num_classes=1)
    with pytest.raises(ValueError, match="img_size"):
        tiny(img_size=(32, 16), y_pooling=True)
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        tiny(img_size=30)
    with pytest.raises(ValueError, match="am_scale"):
        tiny(metric_loss=True, am_scale=0.0)
    model = tiny()
    with pytest.raises(ValueError, match="img_size"):
        model(torch.randn(2, 3, 48, 32))
    with pytest.raises(ValueError, match="pids"):
        model.loss(model(torch.randn(4, 3, 32, 32)), torch.zeros(4, 1, dtype=torch.int64))
    assert LATransformer.improved(5, img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2).y_pooling


def test_torch_compile_forward():
    torch.manual_seed(4)
    x, pids = batch(dtype=torch.float32)
    check_compiled_train_forward(tiny(dropout=0.0, metric_loss=True), x, pids)


def test_onnx_export_matches_onnxruntime(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from reidkern.models.export import export_onnx

    torch.manual_seed(5)
    model = tiny(y_pooling=True)
    path = export_onnx(model, tmp_path / "la.onnx", 32, 32)
    x, _ = batch(b=3, dtype=torch.float32)
    got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"img": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), model.extract(x), rtol=1e-4, atol=1e-5)


def test_bf16_autocast_training_step_improved():
    # `reidkern train la_transformer_improved --amp bf16`: the triplet loss on the GELTs (close
    # vectors sharing the CLS part) came out ~4x too large when its distances ran in bfloat16
    torch.manual_seed(8)
    model = tiny(dropout=0.0, y_pooling=True, metric_loss=True)
    x, pids = batch(dtype=torch.float32)
    _, logs32 = model.loss(model(x), pids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, logs = model.loss(model(x), pids)
    loss.backward()
    for k in logs32:
        torch.testing.assert_close(logs[k].float(), logs32[k], rtol=0.05, atol=0.02, msg=k)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
