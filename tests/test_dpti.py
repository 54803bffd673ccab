"""DPTI (reidkern.models.DPTI): equal to its eager twin in float64, losses, extract, weights,
torch.compile, ONNX, bad input. Small configurations (stages layer1 → layer2, 32×16 images)."""
import pytest
import torch
import torch.nn.functional as F

import reidkern
from reidkern.models.backbones.resnet import ResNetTrunk, STAGES
from reidkern.models.dpti import DPTI
from reidkern.models.dpti_eager import DPTIEager
from reidkern.testing import assert_close, check_compiled_train_forward, randomize_batchnorm

NATIVE = reidkern.build_info()["native"]
TOL = dict(rtol=1e-9, atol=1e-11)


def tiny(**kw):
    cfg = dict(num_classes=5, num_parts=3, dim=16, mid_stage="layer1", final_stage="layer2", part_heads=2)
    cfg.update(kw)
    return DPTI(**cfg)


def batch(b=8, h=32, w=16, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, h, w, generator=g, dtype=dtype), torch.arange(b // 2).repeat_interleave(2)


CONFIGS = {
    "default": {},
    "heads_layers": dict(encoder_heads=2, encoder_depth=2, part_layers=2, template_scale=0.25),
    "rho_gradient": dict(detach_rho=False, rho_temperature=4.0),
    "no_weighting_no_bnneck": dict(part_weighting=False, bnneck=False, num_parts=1, gamma=0.5,
                                   reduce_norm=False, triplet_metric="euclidean", query_std=0.25),
    "mid_equals_final": dict(mid_stage="layer2"),
}


@pytest.mark.parametrize("cfg", list(CONFIGS))
def test_train_step_matches_eager_twin_float64(cfg):
    torch.manual_seed(0)
    model = tiny(**CONFIGS[cfg]).double()
    twin = DPTIEager(model)
    x, pids = batch()
    params = [p for p in model.parameters() if p.requires_grad]
    out = model(x)
    loss, logs = model.loss(out, pids)
    out_ref = twin(x)
    loss_ref, logs_ref = twin.loss(out_ref, pids)
    for k in out_ref:
        assert_close(out[k], out_ref[k], **TOL)
    for k in logs_ref:
        assert_close(logs[k], logs_ref[k], **TOL)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    grads_ref = torch.autograd.grad(loss_ref, params, allow_unused=True)
    for p, a, b in zip(params, grads, grads_ref):
        assert (a is None) == (b is None)
        if a is not None:
            assert_close(a, b, rtol=1e-8, atol=1e-10)
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > 0.9 * len(params)


def test_eval_descriptor_matches_twin_and_shapes():
    torch.manual_seed(1)
    model = randomize_batchnorm(tiny(num_parts=4)).double().eval()
    x, _ = batch(b=3)
    desc = model(x)
    assert desc.shape == (3, (4 + 1) * 16) and model.feature_dim == 80
    assert_close(desc, DPTIEager(model)(x), **TOL)
    # adaptive weighting: the part blocks sum to N·Σρ_i·f_i; the global block is the GAP of A_l
    model.train()
    out = model(x)
    assert torch.allclose(out["rho"].sum(1), torch.ones(3, dtype=torch.float64))
    w = (4 * out["rho"]).unsqueeze(-1)
    assert_close(out["features"][:, :64], (out["parts"] * w).flatten(1), **TOL)


def test_float32_model_matches_float64_twin():
    torch.manual_seed(2)
    model = tiny()
    x, pids = batch(dtype=torch.float32)
    loss, _ = model.loss(model(x), pids)
    ref = DPTIEager(tiny().double())
    ref.model.load_state_dict(model.state_dict())
    loss_ref, _ = ref.loss(ref(x.double()), pids)
    assert_close(loss, loss_ref, rtol=1e-4, atol=1e-5)


def test_part_templates_start_diverse():
    # A fresh model's part vectors must not all be one vector: the diversity loss (mean cos² over
    # pairs) has a stationary point at cos² = 1 and cannot leave it (the failure of N(0, 1/d)
    # queries with a bias-only 1x1 reduction, measured on Con-ReID in docs/models/dpti.md).
    torch.manual_seed(6)
    x, _ = batch(b=8, h=64, w=32, dtype=torch.float32)
    model = tiny(num_parts=4, dim=32)
    with torch.no_grad():
        div = float(model.diversity(model(x)["parts"]))
        model.templates.part_queries.mul_(32 ** -0.5)  # the former N(0, 1/d) init
        model.reduce_norm = torch.nn.Identity()  # and no norm after the 1x1 reduction
        div_old = float(model.diversity(model(x)["parts"]))
    assert div < 0.97 and div_old > 0.99, (div, div_old)


def test_extract_flip_and_mode_restored():
    model = randomize_batchnorm(tiny()).train()
    x, _ = batch(b=2, dtype=torch.float32)
    f = model.extract(x, flip=True)
    assert model.training
    model.eval()
    with torch.no_grad():
        expected = (model(x) + model(x.flip(-1))) / 2
    torch.testing.assert_close(f, expected)


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="num_parts"):
        tiny(num_parts=0)
    with pytest.raises(ValueError, match="num_classes"):
        tiny(num_classes=1)
    with pytest.raises(ValueError, match="mid_stage"):
        tiny(mid_stage="layer3", final_stage="layer2")
    with pytest.raises(ValueError, match="final_stage"):
        tiny(final_stage="layer5")
    with pytest.raises(ValueError, match="part_heads"):
        tiny(part_heads=3)
    with pytest.raises(ValueError, match="query_std"):
        tiny(query_std=-1.0)
    with pytest.raises(ValueError, match="rho_temperature"):
        tiny(rho_temperature=0.0)
    with pytest.raises(ValueError, match="triplet_metric"):
        tiny(triplet_metric="manhattan")
    model = tiny()
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.randn(2, 1, 32, 16))
    with pytest.raises(TypeError):
        model(torch.zeros(2, 3, 32, 16, dtype=torch.int64))
    out = model(torch.randn(4, 3, 32, 16))
    with pytest.raises(ValueError, match="pids"):
        model.loss(out, torch.zeros(3, dtype=torch.int64))


def test_load_weights_own_resnet_and_foreign():
    torch.manual_seed(3)
    src = tiny()
    dst = tiny()
    dst.load_weights(src.state_dict())
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), k
    # a torchvision ResNet-50 state_dict: backbone only; stages past final_stage and fc ignored
    full = ResNetTrunk(STAGES).state_dict()
    full["fc.weight"], full["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    res = dst.load_weights(full)
    assert res.ok and any(k.startswith("layer3.") for k in res.ignored_keys)
    assert torch.equal(dst.backbone.conv1.weight, full["conv1.weight"])
    with pytest.raises(ValueError, match="weights: not a DPTI checkpoint"):
        dst.load_weights({"backbone.patch_embed.proj.weight": torch.zeros(1), "classifiers.fc1_weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="templates.part_queries"):  # another configuration: shape mismatch
        dst.load_weights(tiny(num_parts=4).state_dict())


def test_checkpoint_of_another_number_of_identities_skips_only_the_classifier(tmp_path):
    """``reidkern train dpti --weights`` of a DPTI trained on another dataset (a reidkern training
    checkpoint file): everything loads but the identity classifier, which keeps its fresh
    initialisation and is reported; a backbone mismatch still raises."""
    from reidkern.engine.checkpoint import save_checkpoint
    from reidkern.engine.recipes.dpti import build_dpti

    torch.manual_seed(6)
    src = tiny(num_classes=9)
    path = str(tmp_path / "other_dataset.pt")
    save_checkpoint(path, recipe="dpti", model=src.state_dict(), step=3)
    torch.manual_seed(7)
    fresh = tiny().state_dict()
    small = dict(num_parts=3, dim=16, mid_stage="layer1", final_stage="layer2", part_heads=2)
    with pytest.warns(UserWarning, match=r"another number of identities[\s\S]*classifier\.weight', \(9, 64\), \(5, 64\)"):
        torch.manual_seed(7)
        dst = build_dpti(5, weights=path, **small)
    for k, v in dst.state_dict().items():
        assert torch.equal(v, fresh[k] if k == "classifier.weight" else src.state_dict()[k]), k
    res = tiny().load_weights(src.state_dict())
    assert res.ok and res.skipped_keys == [("classifier.weight", (9, 64), (5, 64))]
    bad = src.state_dict()  # a backbone tensor of another shape, next to a skippable classifier
    bad["backbone.conv1.weight"] = torch.zeros(32, 3, 7, 7)
    with pytest.raises(ValueError, match=r"weights do not match DPTI[\s\S]*backbone\.conv1\.weight', \(32, 3, 7, 7\)"):
        tiny().load_weights(bad)
    with pytest.raises(ValueError, match=r"weights do not match DPTI[\s\S]*reduce\.weight"):
        tiny().load_weights(tiny(num_classes=9, dim=32).state_dict())


@pytest.mark.skipif(not NATIVE, reason="compiled library not built")
def test_torch_compile_forward():
    torch.manual_seed(4)
    x, pids = batch(dtype=torch.float32)
    check_compiled_train_forward(tiny(), x, pids)


def test_onnx_export_matches_onnxruntime(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from reidkern.models.export import export_onnx

    torch.manual_seed(5)
    model = randomize_batchnorm(tiny())
    path = export_onnx(model, tmp_path / "dpti.onnx", 32, 16)
    assert model.training and model.templates.backend is None  # restored
    x, _ = batch(b=3, dtype=torch.float32)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"img": x.numpy()})[0]
    expected = model.extract(x)
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_training_step():
    # `reidkern train dpti --amp bf16`: the part queries (float32 parameters) met bfloat16 tokens
    # in template_attention (TypeError), and the triplet distances cancelled in bfloat16
    torch.manual_seed(7)
    model = tiny()
    x, pids = batch(dtype=torch.float32)
    loss32, logs32 = model.loss(model(x), pids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        loss, logs = model.loss(out, pids)
    loss.backward()
    assert out["features"].dtype == torch.bfloat16
    for k in logs32:  # bfloat16 keeps ~3 significant digits
        torch.testing.assert_close(logs[k].float(), logs32[k], rtol=0.05, atol=0.02, msg=k)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("B,C,h,w,d,bias,channels_last", [(3, 7, 5, 3, 4, True, False), (1, 5, 1, 1, 3, False, True),
                                                           (2, 6, 3, 2, 5, False, False), (0, 4, 2, 2, 3, True, False)])
def test_conv1x1_tokens_equals_conv2d_and_gradcheck(B, C, h, w, d, bias, channels_last):
    from reidkern.models.dpti import _Conv1x1Tokens
    g = torch.Generator().manual_seed(B * 100 + C)
    x = torch.randn(B, C, h, w, generator=g, dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weight = torch.randn(d, C, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(d, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    x.requires_grad_()
    out = _Conv1x1Tokens.apply(x.flatten(2), weight, b)
    ref = F.conv2d(x, weight[:, :, None, None], b).flatten(2).transpose(1, 2)
    assert out.shape == (B, h * w, d) and out.is_contiguous()
    torch.testing.assert_close(out, ref)
    go = torch.randn(out.shape, generator=g, dtype=torch.float64)
    inputs = [x, weight] + ([b] if bias else [])
    for a, r in zip(torch.autograd.grad(out, inputs, go), torch.autograd.grad(ref, inputs, go)):
        torch.testing.assert_close(a, r)
    if B:
        assert torch.autograd.gradcheck(lambda *t: _Conv1x1Tokens.apply(t[0].flatten(2), *t[1:], *([] if bias else [None])),
                                        inputs)
