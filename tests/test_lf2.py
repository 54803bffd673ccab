"""LF2 (unsupervised domain adaptation): structure, parameter count, fusion, mean teacher, the
loss against its eager twin in float64, and the per-epoch pseudo-label step on the model."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reidkern.models.lf2 import (LF2, LF2Loss, LF2Net, ema_alpha, lf2_osnet_x0_25, lf2_resnet50,
                                 official_parameter_count)
from reidkern.models.lf2_eager import EagerLF2Loss, eager_soft_triplet
from reidkern.testing import backends_for, randomize_batchnorm
from reidkern.uda import PseudoLabelStep
from reidkern.uda.lf2_epoch import extract_clustering_features, pseudo_label_epoch


class TinyTrunk(nn.Module):
    """A two-conv backbone with ``featuremaps`` (post-ReLU map [B, C, H/2, W/2])."""

    def __init__(self, channels=16):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, channels, 3, stride=2, padding=1)

    def featuremaps(self, x):
        return torch.relu(self.conv2(torch.relu(self.bn(self.conv1(x)))))


def tiny_lf2(channels=16, num_classes=5, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    net = LF2Net(TinyTrunk(channels), channels, num_classes).to(dtype)
    randomize_batchnorm(net, seed)
    return LF2(net)


def pk_labels(p, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(p, generator=g).repeat_interleave(k)


# ---- structure ---------------------------------------------------------------------------------

def test_parameter_count_equals_official_structure():
    # The official Encoder (student + teacher + Fuse) at k = 700 on ResNet-50: 91,879,552.
    with torch.device("meta"):
        model = LF2(lf2_resnet50(num_classes=700))
    n_student = sum(p.numel() for p in model.student.parameters())
    n_total = sum(p.numel() for p in model.parameters())
    official = official_parameter_count(num_classes=700)
    assert official == {"network": 45_933_632, "fusion": 12_288, "total": 91_879_552}
    assert n_student == official["network"]
    assert n_total == official["total"]
    # The backbone alone is torchvision's ResNet-50 without fc.
    assert sum(p.numel() for p in model.student.backbone.parameters()) == 23_508_032
    # Trainable in stage 2: the student without its 4 frozen BatchNorm biases, plus the fusion
    # BatchNorm weights (they get no gradient, as in the official optimizer).
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == official["network"] - 4 * 2048 + 3 * 2048


def test_resnet50_shapes_on_meta():
    with torch.device("meta"):
        model = LF2(lf2_resnet50(num_classes=700)).train()
        out = model(torch.empty(4, 3, 256, 128))
    assert out.featmap.shape == (4, 2048, 16, 8)
    for f in (out.global_feat, out.upper_feat, out.lower_feat, out.upper_weight, out.lower_weight):
        assert f.shape == (4, 2048)
    assert out.logits.shape == (4, 700)
    model.eval()
    with torch.device("meta"):
        assert model(torch.empty(4, 3, 256, 128)).shape == (4, 6144)


def test_osnet_trunk_random_init():
    model = LF2(lf2_osnet_x0_25(num_classes=3)).eval()
    x = torch.randn(2, 3, 64, 32)
    emb = model(x)
    assert emb.shape == (2, 384)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))
    g, u, l_ = model.clustering_features(x)
    assert g.shape == u.shape == l_.shape == (2, 128)


def test_forward_matches_official_formulas_float64():
    model = tiny_lf2(dtype=torch.float64).eval()
    x = torch.randn(3, 3, 12, 8, dtype=torch.float64)
    s, t = model.student, model.teacher
    out = s(x)
    fm = s.backbone.featuremaps(x)
    pool = lambda z: F.adaptive_avg_pool2d(z, 1).flatten(1) + F.adaptive_max_pool2d(z, 1).flatten(1)
    torch.testing.assert_close(out.global_feat, s.bn_global(pool(fm)))
    up, lo = fm[:, :, :3], fm[:, :, 3:6]
    cat = lambda z: torch.cat([F.adaptive_avg_pool2d(z, 1).flatten(1), F.adaptive_max_pool2d(z, 1).flatten(1)], 1)
    torch.testing.assert_close(out.upper_feat, s.bn_upper(s.fc_upper(cat(up))))
    torch.testing.assert_close(out.lower_feat, s.bn_lower(s.fc_lower(cat(lo))))
    # CBAM channel attention of the part, times the part's pooled descriptor (official "residual").
    mlp = s.ca_upper.se
    att = torch.sigmoid(mlp(F.adaptive_max_pool2d(up, 1)) + mlp(F.adaptive_avg_pool2d(up, 1))).flatten(1)
    torch.testing.assert_close(out.upper_weight, pool(up) * att)
    # Fusion: teacher's map weighted by the student's part weights, pooled, BatchNorm.
    tfm = t.backbone.featuremaps(x)
    g, u, l_ = model.clustering_features(x)
    torch.testing.assert_close(g, model.fusion.bn_global(pool(tfm)))
    torch.testing.assert_close(u, model.fusion.bn_upper(pool(tfm * out.upper_weight[:, :, None, None])))
    torch.testing.assert_close(l_, model.fusion.bn_lower(pool(tfm * out.lower_weight[:, :, None, None])))
    # Inference: the teacher's normalised [global, upper, lower].
    to = t(x)
    torch.testing.assert_close(model(x), F.normalize(torch.cat([to.global_feat, to.upper_feat, to.lower_feat], 1)))


def test_source_preserving_head_starts_at_the_source_features_float64():
    # pooling="avg", part_init="identity" (lf2_osnet_x0_25's defaults): at initialisation (eval,
    # BatchNorms at their initial running statistics) the global feature is the map's GAP — the
    # source model's own pooled feature — and each part's feature is the part's GAP.
    torch.manual_seed(0)
    net = LF2Net(TinyTrunk(16), 16, 5, pooling="avg", part_init="identity").double()
    model = LF2(net).eval()
    x = torch.randn(3, 3, 12, 8, dtype=torch.float64)
    fm = net.backbone.featuremaps(x)
    gap = lambda z: z.mean((2, 3))
    bn_scale = 1.0 / (1.0 + net.bn_global.eps) ** 0.5  # running_var 1 at init
    out = net(x)
    torch.testing.assert_close(out.global_feat, gap(fm) * bn_scale)
    torch.testing.assert_close(out.upper_feat, gap(fm[:, :, :3]) * bn_scale)
    torch.testing.assert_close(out.lower_feat, gap(fm[:, :, 3:6]) * bn_scale)
    g, _, _ = model.clustering_features(x)
    torch.testing.assert_close(g, gap(fm) * bn_scale)  # the fusion pools the same way
    # The part projections still see concat(GAP, GMP) and learn from it.
    assert net.fc_upper.weight.shape == (16, 32) and net.fc_upper.weight.requires_grad
    # The OSNet configuration defaults to it; ResNet-50 keeps the official head.
    assert lf2_osnet_x0_25().pooling == "avg"
    with torch.device("meta"):
        assert lf2_resnet50().pooling == "avgmax"


@pytest.mark.parametrize("kw, match", [({"pooling": "max"}, "pooling"), ({"part_init": "zeros"}, "part_init")])
def test_bad_head_options(kw, match):
    with pytest.raises(ValueError, match=match):
        LF2Net(TinyTrunk(16), 16, 5, **kw)


def test_part_split_needs_two_rows():
    model = tiny_lf2()
    with pytest.raises(ValueError, match="at least 2 rows"):
        model.student(torch.randn(2, 3, 2, 8))


# ---- mean teacher ------------------------------------------------------------------------------

def test_ema_alpha_schedule():
    assert ema_alpha(0) == 0.0
    assert ema_alpha(1) == 0.5
    assert ema_alpha(9) == pytest.approx(0.9)
    assert ema_alpha(10**6) == 0.999
    with pytest.raises(ValueError, match="global_step"):
        ema_alpha(-1)


def test_update_teacher_is_ema_of_parameters_only():
    model = tiny_lf2(dtype=torch.float64)
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(torch.randn_like(p))
    t0 = copy.deepcopy(model.teacher)
    a = model.update_teacher(global_step=3, alpha=0.999)
    assert a == pytest.approx(0.75)
    for (name, pt), p0, ps in zip(model.teacher.named_parameters(), t0.parameters(), model.student.parameters()):
        torch.testing.assert_close(pt, 0.75 * p0 + 0.25 * ps, msg=name)
        assert not pt.requires_grad
    for bt, b0 in zip(model.teacher.buffers(), t0.buffers()):
        assert torch.equal(bt, b0)
    model.update_teacher(global_step=0)
    for pt, ps in zip(model.teacher.parameters(), model.student.parameters()):
        assert torch.equal(pt, ps)


def test_training_forward_updates_teacher_and_fusion_statistics():
    model = tiny_lf2().train()
    before_t = model.teacher.bn_global.running_mean.clone()
    before_f = model.fusion.bn_upper.running_mean.clone()
    out = model(torch.randn(4, 3, 12, 8))
    assert out.logits.requires_grad and not model.teacher.bn_global.weight.requires_grad
    assert not torch.equal(model.teacher.bn_global.running_mean, before_t)
    assert not torch.equal(model.fusion.bn_upper.running_mean, before_f)


# ---- the loss and its eager twin ---------------------------------------------------------------

@pytest.mark.parametrize("backend", backends_for("cpu", supported=("cpp", "reference")))
def test_loss_equals_eager_twin_float64(backend):
    model = tiny_lf2(dtype=torch.float64, num_classes=6).train()
    twin = copy.deepcopy(model)
    xs = [torch.randn(12, 3, 12, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    ys = [pk_labels(6, 2, 0)[:12] % 6, pk_labels(4, 3, 1), pk_labels(3, 4, 2)]
    loss, logs = LF2Loss(backend=backend)(model(xs[0]), ys[0], model(xs[1]), ys[1], model(xs[2]), ys[2])
    ref, _ = EagerLF2Loss()(twin(xs[0]), ys[0], twin(xs[1]), ys[1], twin(xs[2]), ys[2])
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    assert set(logs) >= {"ce", "tri_global", "tri_upper", "tri_lower", "acc"}
    loss.backward()
    ref.backward()
    for (name, p), q in zip(model.student.named_parameters(), twin.student.parameters()):
        if p.grad is None:
            assert q.grad is None or not q.grad.any(), name
            continue
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=name)
    # The attention MLPs reach only the clustering features: no gradient (as the official code).
    assert model.student.ca_upper.se[0].weight.grad is None


def test_soft_triplet_margin0_is_softplus():
    emb = torch.randn(8, 5, dtype=torch.float64)
    y = pk_labels(4, 2)
    xx = (emb * emb).sum(1, keepdim=True)
    d = (xx + xx.t() - 2 * emb @ emb.t()).clamp(min=1e-12).sqrt()
    same = y[:, None] == y[None]
    ap = torch.where(same & ~torch.eye(8, dtype=torch.bool), d, torch.zeros(())).amax(1)
    an = torch.where(same, torch.full((), 1e9, dtype=torch.float64), d).amin(1)
    torch.testing.assert_close(eager_soft_triplet(emb, y), F.softplus(ap - an).mean())


def test_loss_needs_classifier():
    model = tiny_lf2(num_classes=0).train()
    out = model(torch.randn(4, 3, 12, 8))
    y = pk_labels(2, 2)
    with pytest.raises(ValueError, match="no classifier"):
        LF2Loss()(out, y, out, y, out, y)


# ---- classifier and checkpoints ----------------------------------------------------------------

def test_set_classifier_normalises_centroids_and_loads_other_sizes():
    model = tiny_lf2(num_classes=3)
    param = model.student.classifier.weight
    centers = torch.randn(7, 16)
    model.set_classifier(centers)
    assert model.student.classifier.weight is param  # optimizers built over the model still see it
    for net in (model.student, model.teacher):
        assert net.num_classes == 7
        torch.testing.assert_close(net.classifier.weight, F.normalize(centers, dim=1))
    assert model.student.classifier.weight.requires_grad
    assert not model.teacher.classifier.weight.requires_grad
    fresh = tiny_lf2(num_classes=3, seed=1)
    fresh.load_state_dict(model.state_dict())
    assert fresh.student.num_classes == 7 and fresh.teacher.num_classes == 7
    for a, b in zip(fresh.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="weight"):
        model.student.reset_classifier(3, torch.randn(4, 16))


# ---- per-epoch pseudo-labels on the model ------------------------------------------------------

def _images(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.arange(n) % 4
    base = torch.randn(4, 3, 12, 8, generator=g) * 2
    return base[ids] + 0.05 * torch.randn(n, 3, 12, 8, generator=g)


def test_pseudo_label_epoch_sets_labels_and_classifiers():
    model = tiny_lf2(num_classes=0).train()
    imgs = _images()
    feats = extract_clustering_features(model, [imgs[:16], {"img": imgs[16:]}])
    assert model.training  # mode restored
    assert set(feats) == {"global", "upper", "lower"}
    for f in feats.values():
        assert f.shape == (40, 16)
        torch.testing.assert_close(f.norm(dim=1), torch.ones(40))
    # Flip-averaged: the sum over the image and its mirror, normalised.
    model.eval()
    g1 = model.clustering_features(imgs[:16])[0] + model.clustering_features(imgs[:16].flip(-1))[0]
    torch.testing.assert_close(feats["global"][:16], F.normalize(g1, dim=1))
    step = PseudoLabelStep(num_clusters=4, seed=0)
    res = pseudo_label_epoch(model, step, feats)
    assert set(step.labels) == {"global", "upper", "lower"}
    assert model.student.num_classes == res["global"].num_clusters
    torch.testing.assert_close(model.teacher.classifier.weight,
                               F.normalize(torch.from_numpy(res["global"].centers), dim=1))


def test_pseudo_label_epoch_is_never_half_applied():
    model = tiny_lf2(num_classes=0)
    feats = extract_clustering_features(model, [_images()])
    step = PseudoLabelStep(num_clusters=4, seed=0)
    pseudo_label_epoch(model, step, feats)
    state = copy.deepcopy(step.state_dict())
    weights = model.student.classifier.weight.clone()
    bad = dict(feats)
    bad["lower"] = feats["lower"].clone()
    bad["lower"][5, 3] = float("nan")
    with pytest.raises(ValueError, match="lower features: 1 of 40 samples have NaN"):
        pseudo_label_epoch(model, step, bad)
    assert torch.equal(model.student.classifier.weight, weights)
    after = step.state_dict()
    assert after["rng"] == state["rng"] and after["epoch"] == state["epoch"]
    for b in ("global", "upper", "lower"):
        assert np.array_equal(after["results"][b]["labels"], state["results"][b]["labels"])
    with pytest.raises(ValueError, match=r"expected \[N, 16\]"):
        pseudo_label_epoch(model, step, {b: f[:, :8] for b, f in feats.items()})


def test_osnet_real_weights_load(reid_mini):
    pytest.importorskip("onnx")
    net = lf2_osnet_x0_25(weights=reid_mini / "osnet_x0_25_msmt17.onnx")
    assert net.backbone.folded and net.channels == 128
    x = torch.randn(2, 3, 256, 128)
    out = net.eval()(x)
    assert out.featmap.shape == (2, 128, 16, 8)
    torch.testing.assert_close(out.featmap, net.backbone.featuremaps(x))


def test_twin_interface_matches_model_float64():
    from reidkern.models import LF2 as LazyLF2, LF2Eager

    assert LazyLF2 is LF2
    model = tiny_lf2(dtype=torch.float64, num_classes=6).train()
    twin = LF2Eager(model)
    x = torch.randn(12, 3, 12, 8, dtype=torch.float64)
    y = pk_labels(6, 2)
    (fm,) = model.forward_backbone(x)
    (fm2,) = twin.forward_backbone(x)
    torch.testing.assert_close(fm, fm2)
    yu, yl = y.view(-1, 2).t().reshape(-1), y.flip(0)
    a = model.loss(model.forward_head(fm), y, yu, yl)[0]
    b = twin.loss(twin.forward_head(fm2), y, yu, yl)[0]
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert sum(1 for _ in twin.parameters()) == sum(1 for _ in model.parameters())  # shared, not copied
