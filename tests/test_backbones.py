"""Tests for reidkern.models.weights, resnet50, two_stream_resnet50 and the ViT backbones."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reidkern.testing import randomize_batchnorm
from reidkern.models.backbones import (
    deit_small_distilled_patch16,
    resize_pos_embed,
    resnet50,
    two_stream_resnet50,
    vit_base_patch16,
)
from reidkern.models.backbones.vit import VisionTransformer
from reidkern.models.weights import LoadResult, load_weights, read_state_dict

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def tv_resnet():
    """A torchvision-layout ResNet-50 (with fc) with non-trivial BN statistics."""
    torch.manual_seed(0)
    return randomize_batchnorm(resnet50(last_stride=2, num_classes=1000, out_stages=("layer4", "fc"))).eval()


# ---------------------------------------------------------------- weights helper
class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)


def test_read_state_dict_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        read_state_dict(tmp_path / "nope.pth")


def test_read_state_dict_wrong_format(tmp_path):
    p = tmp_path / "w.txt"
    p.write_text("hello")
    with pytest.raises(ValueError, match="unknown weights format"):
        read_state_dict(p)
    p = tmp_path / "w.pth"
    p.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="could not be read"):
        read_state_dict(p)
    p = tmp_path / "w.onnx"
    p.write_bytes(b"x")
    with pytest.raises(ValueError, match="OSNet"):
        read_state_dict(p)


class _NotAllowed:
    pass


def test_read_state_dict_refuses_pickled_objects(tmp_path):
    p = tmp_path / "evil.pth"
    torch.save({"a.weight": torch.zeros(1), "obj": _NotAllowed()}, p)
    with pytest.raises(ValueError, match="weights_only"):
        read_state_dict(p)


def test_read_state_dict_non_tensor_entries(tmp_path):
    p = tmp_path / "w.pth"
    torch.save({"a.weight": torch.zeros(1), "epoch": 3}, p)
    with pytest.raises(ValueError, match="epoch"):
        read_state_dict(p)


def test_read_state_dict_unwraps(tmp_path):
    m = Tiny()
    sd = {"module." + k: v for k, v in m.state_dict().items()}
    p = tmp_path / "w.pth"
    torch.save({"state_dict": sd, "epoch": 3}, p)
    out = read_state_dict(p)
    assert set(out) == set(m.state_dict())
    torch.testing.assert_close(out["a.weight"], m.a.weight.detach())


def test_safetensors_roundtrip(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    m = Tiny()
    p = tmp_path / "w.safetensors"
    st.save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(p))
    m2 = Tiny()
    assert load_weights(m2, p).ok
    torch.testing.assert_close(m2.a.weight, m.a.weight)


def test_load_weights_mismatch_lists_keys():
    m = Tiny()
    sd = dict(m.state_dict())
    del sd["a.bias"]
    sd["extra.weight"] = torch.zeros(2)
    sd["bn.weight"] = torch.zeros(5)
    before = m.a.weight.detach().clone()
    sd["a.weight"] = torch.ones(4, 3)
    with pytest.raises(ValueError) as ei:
        load_weights(m, sd)
    msg = str(ei.value)
    assert "missing keys (1): a.bias" in msg
    assert "unexpected keys (1): extra.weight" in msg
    assert "bn.weight" in msg and "(5,)" in msg and "(4,)" in msg
    torch.testing.assert_close(m.a.weight.detach(), before)  # strict: nothing loaded


def test_load_weights_non_strict_reports_and_loads_matching():
    m = Tiny()
    sd = {"a.weight": torch.ones(4, 3), "bn.weight": torch.zeros(5), "zzz": torch.zeros(1)}
    with pytest.warns(UserWarning, match="missing keys"):
        res = load_weights(m, sd, strict=False)
    assert isinstance(res, LoadResult) and not res.ok
    assert res.unexpected_keys == ["zzz"]
    assert "a.bias" in res.missing_keys and "bn.running_mean" in res.missing_keys
    assert "bn.num_batches_tracked" not in res.missing_keys  # optional buffer
    assert res.mismatched_keys == [("bn.weight", (5,), (4,))]
    torch.testing.assert_close(m.a.weight.detach(), torch.ones(4, 3))
    assert torch.all(m.bn.weight == 1)  # mismatched key left alone


def test_load_weights_id_classifier_rule():
    """Only a tensor under ``id_classifier_prefixes`` with the same rank and another size is
    skipped (left at its init, reported); a rank change or any other key still raises; a
    module's extra state is neither read nor required."""
    class Head(Tiny):
        id_classifier_prefixes = ("a.",)

        def get_extra_state(self):
            return {"count": torch.tensor(3)}

        def set_extra_state(self, state):
            raise AssertionError("extra state must not be loaded")

    m = Head()
    before = m.a.weight.detach().clone()
    sd = {k: torch.full_like(v, 2.0) if v.is_floating_point() else v for k, v in m.state_dict().items()
          if k != "_extra_state"}
    sd["a.weight"], sd["a.bias"] = torch.ones(6, 3), torch.ones(6)  # 6 classes instead of 4
    sd["_extra_state"] = {"count": torch.tensor(9)}
    with pytest.warns(UserWarning, match=r"another number of identities[\s\S]*a\.weight', \(6, 3\), \(4, 3\)"):
        res = load_weights(m, sd)
    assert res.ok and res.skipped_keys == [("a.bias", (6,), (4,)), ("a.weight", (6, 3), (4, 3))]
    assert torch.equal(m.a.weight, before) and torch.all(m.bn.weight == 2)
    with pytest.raises(ValueError, match=r"a\.weight', \(6, 3, 1\), \(4, 3\)"):  # rank differs
        load_weights(m, {**sd, "a.weight": torch.ones(6, 3, 1)})
    with pytest.raises(ValueError, match=r"bn\.weight"):  # outside the prefixes
        load_weights(m, {**sd, "bn.weight": torch.ones(5)})
    with pytest.raises(ValueError, match=r"a\.weight"):  # the rule is opt-in per module
        load_weights(m, sd, id_classifier_prefixes=())


def test_load_weights_bad_types():
    with pytest.raises(TypeError, match="weights"):
        load_weights(Tiny(), 3)
    with pytest.raises(TypeError, match="module"):
        load_weights("x", {})


# ---------------------------------------------------------------- ResNet-50
EXPECTED_RESNET = {
    "conv1.weight": (64, 3, 7, 7),
    "bn1.running_mean": (64,),
    "bn1.num_batches_tracked": (),
    "layer1.0.conv1.weight": (64, 64, 1, 1),
    "layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "layer1.0.downsample.1.running_var": (256,),
    "layer2.0.conv2.weight": (128, 128, 3, 3),
    "layer3.5.bn3.weight": (1024,),
    "layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
    "layer4.2.conv3.weight": (2048, 512, 1, 1),
    "layer4.2.bn3.running_var": (2048,),
    "fc.weight": (1000, 2048),
    "fc.bias": (1000,),
}


def test_resnet50_torchvision_names(tv_resnet):
    sd = tv_resnet.state_dict()
    for k, shape in EXPECTED_RESNET.items():
        assert tuple(sd[k].shape) == shape, k
    assert len(sd) == 320  # torchvision resnet50().state_dict() has 320 entries
    assert sum(p.numel() for p in tv_resnet.parameters()) == 25_557_032  # torchvision's count
    assert "fc.weight" not in resnet50().state_dict()  # ReID backbone: no head by default


def _ref_resnet50(sd, x, last_stride):
    """float64 functional ResNet-50 v1.5 from a torchvision-layout state_dict."""
    sd = {k: v.double() for k, v in sd.items()}

    def bn(t, p):
        return F.batch_norm(t, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"], False, 0.0, 1e-5)

    x = F.relu(bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), "bn1"))
    x = F.max_pool2d(x, 3, 2, 1)
    feats = {}
    for li, (n, stride) in enumerate(zip((3, 4, 6, 3), (1, 2, 2, last_stride)), start=1):
        for b in range(n):
            p = f"layer{li}.{b}"
            s = stride if b == 0 else 1
            y = F.relu(bn(F.conv2d(x, sd[p + ".conv1.weight"]), p + ".bn1"))
            y = F.relu(bn(F.conv2d(y, sd[p + ".conv2.weight"], stride=s, padding=1), p + ".bn2"))
            y = bn(F.conv2d(y, sd[p + ".conv3.weight"]), p + ".bn3")
            idt = x
            if b == 0:
                idt = bn(F.conv2d(x, sd[p + ".downsample.0.weight"], stride=s), p + ".downsample.1")
            x = F.relu(y + idt)
        feats[f"layer{li}"] = x
    return feats


@pytest.mark.parametrize("last_stride", [1, 2])
def test_resnet50_matches_float64_reference(tv_resnet, last_stride):
    m = resnet50(last_stride=last_stride, weights=tv_resnet.state_dict(), out_stages=("layer3", "layer4"))
    m = m.eval().double()
    x = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        out = m(x)
    ref = _ref_resnet50(tv_resnet.state_dict(), x, last_stride)
    assert list(out) == ["layer3", "layer4"]
    assert out["layer4"].shape == (2, 2048, 4 // last_stride, 2 // last_stride)
    for k in out:
        torch.testing.assert_close(out[k], ref[k], rtol=1e-10, atol=1e-10)


def test_resnet50_reid_shapes_and_heads(tv_resnet):
    m = resnet50(weights=tv_resnet.state_dict(), num_classes=1000, out_stages=("stem", "layer4", "pool", "fc")).eval()
    with torch.no_grad():
        out = m(torch.randn(1, 3, 256, 128))
    assert out["stem"].shape == (1, 64, 64, 32)
    assert out["layer4"].shape == (1, 2048, 16, 8)  # LF2: 2048x16x8 at 256x128
    torch.testing.assert_close(out["pool"], out["layer4"].mean((2, 3)))
    torch.testing.assert_close(out["fc"], F.linear(out["pool"], m.fc.weight, m.fc.bias))


def test_resnet50_roundtrip_file(tmp_path):
    torch.manual_seed(3)
    a = randomize_batchnorm(resnet50(out_stages=("layer2",)), 3).eval()
    p = tmp_path / "r50.pth"
    torch.save(a.state_dict(), p)
    b = resnet50(weights=p, out_stages=("layer2",)).eval()
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(a(x)["layer2"], b(x)["layer2"], rtol=0, atol=0)


def test_resnet50_torchvision_checkpoint_head_ignored_and_missing_key_error(tv_resnet):
    sd = dict(tv_resnet.state_dict())
    res = resnet50(out_stages=("layer4",)).load_weights(sd)
    assert res.ok and res.ignored_keys == ["fc.bias", "fc.weight"]
    del sd["layer4.2.bn3.running_var"]
    sd["layer5.0.conv1.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"layer4\.2\.bn3\.running_var[\s\S]*layer5\.0\.conv1\.weight"):
        resnet50(weights=sd)


def test_resnet50_bad_arguments():
    with pytest.raises(ValueError, match="last_stride"):
        resnet50(last_stride=3)
    with pytest.raises(ValueError, match="out_stages"):
        resnet50(out_stages=("layer5",))
    with pytest.raises(ValueError, match="num_classes"):
        resnet50(out_stages=("fc",))
    m = resnet50(out_stages=("stem",))
    with pytest.raises(ValueError, match=r"x: expected an image batch"):
        m(torch.randn(3, 64, 32))
    with pytest.raises(TypeError, match="x"):
        m(torch.zeros(1, 3, 8, 8, dtype=torch.long))


# ---------------------------------------------------------------- two-stream ResNet-50
def test_two_stream_loads_torchvision_into_both_streams(tv_resnet):
    ts = two_stream_resnet50(weights=tv_resnet.state_dict(), out_stages=("layer1", "layer4")).eval()
    sd = ts.state_dict()
    assert tuple(sd["visible.conv1.weight"].shape) == (64, 3, 7, 7)
    assert "infrared.layer1.2.bn3.running_var" in sd and "shared.layer4.2.bn3.running_var" in sd
    assert not any(k.startswith(("visible.layer2", "shared.layer1", "fc.")) for k in sd)
    torch.testing.assert_close(sd["visible.layer1.0.conv2.weight"], sd["infrared.layer1.0.conv2.weight"])
    ref = resnet50(weights=tv_resnet.state_dict(), out_stages=("layer1", "layer4")).eval()
    x = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        r = ref(x)
        for mod in ("visible", "infrared"):
            o = ts(x, mod)
            assert list(o) == ["layer1", "layer4"]
            torch.testing.assert_close(o["layer4"], r["layer4"])


def test_two_stream_mixed_batch_and_roundtrip(tmp_path, tv_resnet):
    ts = two_stream_resnet50(weights=tv_resnet.state_dict(), split_after="stem", out_stages=("stem", "layer2"))
    with torch.no_grad():
        ts.infrared.conv1.weight.mul_(-1.0)  # make the streams differ
    ts.eval()
    x = torch.randn(4, 3, 64, 32)
    modality = torch.tensor([1, 0, 0, 1])
    with torch.no_grad():
        mixed = ts(x, modality)
        vis = ts(x, "visible")
        ir = ts(x, "infrared")
    for k in ("stem", "layer2"):
        torch.testing.assert_close(mixed[k][[1, 2]], vis[k][[1, 2]])
        torch.testing.assert_close(mixed[k][[0, 3]], ir[k][[0, 3]])
    assert not torch.allclose(vis["layer2"], ir["layer2"])
    p = tmp_path / "ts.pt"
    torch.save(ts.state_dict(), p)
    ts2 = two_stream_resnet50(weights=p, split_after="stem", out_stages=("stem", "layer2")).eval()
    with torch.no_grad():
        torch.testing.assert_close(ts2(x, modality)["layer2"], mixed["layer2"], rtol=0, atol=0)


def test_two_stream_bad_modality():
    ts = two_stream_resnet50(split_after="stem", out_stages=("stem",))
    x = torch.randn(2, 3, 32, 16)
    with pytest.raises(ValueError, match="modality"):
        ts(x, "thermal")
    with pytest.raises(ValueError, match="modality"):
        ts(x, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="modality"):
        ts(x, torch.tensor([0, 1, 1]))
    with pytest.raises(TypeError, match="modality"):
        ts(x, 0)
    with pytest.raises(ValueError, match="split_after"):
        two_stream_resnet50(split_after="layer4")


# ---------------------------------------------------------------- ViT / DeiT
def test_vit_base_timm_names():
    m = vit_base_patch16(img_size=(256, 128))
    sd = m.state_dict()
    expected = {
        "cls_token": (1, 1, 768),
        "pos_embed": (1, 1 + 16 * 8, 768),
        "patch_embed.proj.weight": (768, 3, 16, 16),
        "patch_embed.proj.bias": (768,),
        "blocks.0.norm1.weight": (768,),
        "blocks.11.attn.qkv.weight": (2304, 768),
        "blocks.11.attn.qkv.bias": (2304,),
        "blocks.11.attn.proj.weight": (768, 768),
        "blocks.11.mlp.fc1.weight": (3072, 768),
        "blocks.11.mlp.fc2.weight": (768, 3072),
        "blocks.11.norm2.bias": (768,),
        "norm.weight": (768,),
    }
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    assert "dist_token" not in sd and len(sd) == 4 + 12 * 12 + 2
    # timm vit_base_patch16_224 has 86,567,656 parameters with its 1000-class head
    # (768*1000 + 1000); at 224 the pos_embed has 197 tokens instead of 129.
    n = sum(p.numel() for p in m.parameters()) + 768 * 1000 + 1000 + (197 - 129) * 768
    assert n == 86_567_656


def _deit_checkpoint(img=224, seed=0):
    """A DeiT-S distilled state_dict at 224x224 with heads, as a timm/DeiT file has."""
    torch.manual_seed(seed)
    m = deit_small_distilled_patch16(img_size=img)
    sd = dict(m.state_dict())
    sd["head.weight"], sd["head.bias"] = torch.zeros(1000, 384), torch.zeros(1000)
    sd["head_dist.weight"], sd["head_dist.bias"] = torch.zeros(1000, 384), torch.zeros(1000)
    return sd


@pytest.fixture(scope="module")
def deit_ckpt():
    return _deit_checkpoint()


def test_deit_names_and_pos_embed_interpolation(deit_ckpt):
    assert tuple(deit_ckpt["dist_token"].shape) == (1, 1, 384)
    assert tuple(deit_ckpt["pos_embed"].shape) == (1, 2 + 196, 384)
    assert tuple(deit_ckpt["blocks.11.mlp.fc1.weight"].shape) == (1536, 384)
    m = VisionTransformer(img_size=(64, 32), stride_size=12, embed_dim=384, depth=12, num_heads=6, distilled=True)
    res = m.load_weights(deit_ckpt)
    assert res.ok and {"head.weight", "head_dist.bias"} <= set(res.ignored_keys)
    assert m.grid_size == ((64 - 16) // 12 + 1, (32 - 16) // 12 + 1) == (5, 2)
    pe = m.pos_embed.detach()
    assert pe.shape == (1, 2 + 10, 384)
    torch.testing.assert_close(pe[:, :2], deit_ckpt["pos_embed"][:, :2], rtol=0, atol=0)  # cls + dist kept
    grid = deit_ckpt["pos_embed"][:, 2:].reshape(1, 14, 14, 384).permute(0, 3, 1, 2)
    ref = F.interpolate(grid.double(), size=(5, 2), mode="bicubic", align_corners=False)
    torch.testing.assert_close(pe[:, 2:].double(), ref.permute(0, 2, 3, 1).reshape(1, 10, 384), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m.blocks[3].attn.qkv.weight.detach(), deit_ckpt["blocks.3.attn.qkv.weight"])


def test_resize_pos_embed_properties():
    const = torch.full((1, 1 + 6 * 4, 8), 0.5)
    const[:, 0] = 7.0
    out = resize_pos_embed(const, 1, (6, 4), (9, 5))
    assert out.shape == (1, 1 + 45, 8)
    assert out[0, 0].eq(7.0).all()
    torch.testing.assert_close(out[:, 1:], torch.full((1, 45, 8), 0.5))  # bicubic keeps constants
    same = torch.randn(1, 2 + 12, 4)
    assert resize_pos_embed(same, 2, (3, 4), (3, 4)) is same
    with pytest.raises(ValueError, match="pos_embed"):
        resize_pos_embed(torch.randn(1, 10, 4), 1, (3, 4), (2, 2))


def test_non_square_checkpoint_grid_needs_hint():
    src = VisionTransformer(img_size=(48, 32), embed_dim=24, depth=1, num_heads=2)  # 3x2 grid
    dst = VisionTransformer(img_size=(64, 32), embed_dim=24, depth=1, num_heads=2)  # 4x2 grid
    with pytest.raises(ValueError, match="checkpoint_grid"):
        dst.load_weights(src.state_dict())
    assert dst.load_weights(src.state_dict(), checkpoint_grid=(3, 2)).ok
    assert dst.pos_embed.shape == (1, 9, 24)


def test_depth_and_skip_norm_match_full_model(deit_ckpt):
    full = deit_small_distilled_patch16(img_size=(64, 32), weights=deit_ckpt).eval()
    lgur = deit_small_distilled_patch16(img_size=(64, 32), weights=deit_ckpt, depth=11, final_norm=False).eval()
    assert len(lgur.blocks) == 11 and isinstance(lgur.norm, nn.Identity)
    assert not any(k.startswith(("blocks.11.", "norm.")) for k in lgur.state_dict())
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        out = lgur(x)
        t = full.patch_embed(x)
        t = torch.cat([full.cls_token.expand(2, -1, -1), full.dist_token.expand(2, -1, -1), t], 1) + full.pos_embed
        for blk in full.blocks[:11]:
            t = blk(t)
        full_out = full(x)
    torch.testing.assert_close(out.tokens, t)
    assert out.patch_tokens.shape == (2, 4 * 2, 384)
    torch.testing.assert_close(out.cls_token, t[:, 0])
    torch.testing.assert_close(out.dist_token, t[:, 1])
    torch.testing.assert_close(full_out.tokens, full.norm(full.blocks[11](t)))


def test_block_matches_float64_attention_reference():
    torch.manual_seed(5)
    m = VisionTransformer(img_size=(32, 32), embed_dim=16, depth=1, num_heads=2).eval().double()
    blk = m.blocks[0]
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    with torch.no_grad():
        h = blk.norm1(x)
        q, k, v = blk.attn.qkv(h).reshape(3, 5, 3, 2, 8).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), -1) @ v
        y = x + blk.attn.proj(a.transpose(1, 2).reshape(3, 5, 16))
        hh = F.layer_norm(y, (16,), blk.norm2.weight, blk.norm2.bias, 1e-6)
        ref = y + blk.mlp.fc2(F.gelu(blk.mlp.fc1(hh)))
        torch.testing.assert_close(blk(x), ref)
    assert blk.norm1.eps == 1e-6


def test_vit_bad_arguments():
    with pytest.raises(ValueError, match="stride_size"):
        deit_small_distilled_patch16(img_size=(64, 32), stride_size=17)
    with pytest.raises(ValueError, match="depth"):
        deit_small_distilled_patch16(img_size=(64, 32), depth=13)
    with pytest.raises(ValueError, match="img_size"):
        deit_small_distilled_patch16(img_size=(8, 32))
    m = VisionTransformer(img_size=(32, 16), embed_dim=16, depth=1, num_heads=2)
    with pytest.raises(ValueError, match="img_size"):
        m(torch.randn(1, 3, 48, 16))
