"""reidkern.nn losses against independent float64 oracles (fast-reid, torchreid, MMT, LGUR forms)."""
import os
import socket

import pytest
import torch
import torch.nn.functional as F

from reidkern.nn import (AMSoftmaxLoss, BatchHardMiner, CrossModalRankingLoss, PartDiversityLoss,
                         SoftTripletLoss, TripletLoss, cosface_logits)
from reidkern.ops.reference.batch_hard_mining import (pairwise_distance_matrix, triplet_loss_fastreid,
                                                      triplet_loss_torchreid)
from reidkern.testing import assert_close, backends_for, device_backend_cases

BACKENDS = backends_for("cpu")
# The mining losses on every device x backend (CUDA cases skipped without a GPU; tools/gpu_check.sh
# runs them) and with the eager reference on the CPU, against the CPU oracles.
DEVICE_BACKENDS = device_backend_cases() + [pytest.param("cpu", "reference", id="cpu-reference")]


def batch(b=16, d=8, ids=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, d, generator=g, dtype=dtype),
            torch.randint(0, ids, (b,), generator=g))


def grads(fn, x, *rest, device="cpu"):
    """The loss ``fn(x, *rest)`` and its gradient in x, computed on ``device``, returned on the CPU."""
    x = x.detach().clone().to(device).requires_grad_()
    loss = fn(x, *(r.to(device) if isinstance(r, torch.Tensor) else r for r in rest))
    (g,) = torch.autograd.grad(loss, x)
    return loss.detach().cpu(), g.cpu()


# ---- TripletLoss --------------------------------------------------------------------------------

@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("margin", [0.3, None, 0.0])
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
def test_triplet_matches_fastreid_and_torchreid(device, backend, margin, metric):
    x, labels = batch(17, 9, 5, seed=1)
    labels[0] = 99  # a singleton: no positive, left out
    loss, g = grads(TripletLoss(margin, metric=metric, backend=backend), x, labels, device=device)
    for oracle in (triplet_loss_fastreid, triplet_loss_torchreid):
        ref, gr = grads(lambda a, b: oracle(a, b, margin, metric), x, labels)
        assert_close(loss, ref)
        assert_close(g, gr)


def test_triplet_float32_and_half_inputs():
    x, labels = batch(32, 16, 8, seed=2, dtype=torch.float32)
    loss = TripletLoss()(x, labels)
    assert loss.dtype == torch.float32
    assert_close(loss, triplet_loss_fastreid(x.double(), labels), dtype=torch.float32)
    assert torch.isfinite(TripletLoss()(x.half(), labels))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mining,metric", [("hard", "euclidean"), ("hard", "cosine"), ("weighted", "euclidean")])
def test_triplet_under_autocast_computes_distances_in_float32(backend, mining, metric):
    # close rows with a large common part (part features, ViT tokens): under bf16 autocast the
    # x·y products of |x|² + |y|² − 2x·y cancelled and the mined distances came out ~0 (1e-6)
    g = torch.Generator().manual_seed(3)
    x = 3 * torch.randn(1, 64, generator=g) + 0.05 * torch.randn(8, 64, generator=g)
    labels = torch.arange(4).repeat_interleave(2)
    loss = TripletLoss(None if mining == "weighted" else 0.3, metric=metric, mining=mining, backend=backend)
    expected = loss(x, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss(x, labels)
    assert_close(got, expected, rtol=1e-5, atol=1e-6)
    if mining == "hard":  # the op itself, as every mining loss calls it
        from reidkern.ops import batch_hard_mining

        res = batch_hard_mining(x, labels, metric, backend=backend)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            res_ac = batch_hard_mining(x, labels, metric, backend=backend)
        for a, b in zip(res_ac, res):
            assert_close(a, b, rtol=1e-5, atol=1e-6)


def _weighted_oracle(x, labels, margin):
    """Per-anchor loop of fast-reid's weighted regularised triplet (self excluded, exact softmax)."""
    dist = pairwise_distance_matrix(x, x)
    losses = []
    for i in range(len(labels)):
        pos = (labels == labels[i]).clone()
        pos[i] = False
        neg = labels != labels[i]
        if not pos.any() or not neg.any():
            continue
        dp, dn = dist[i][pos], dist[i][neg]
        ap = (dp * torch.softmax(dp, 0)).sum()
        an = (dn * torch.softmax(-dn, 0)).sum()
        losses.append(F.softplus(ap - an) if margin is None else F.relu(ap - an + margin))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("margin", [None, 0.3])
def test_triplet_weighted_mining(margin):
    x, labels = batch(15, 6, 4, seed=3)
    labels[2] = 50
    loss, g = grads(TripletLoss(margin, mining="weighted"), x, labels)
    ref, gr = grads(lambda a, b: _weighted_oracle(a, b, margin), x, labels)
    assert_close(loss, ref)
    assert_close(g, gr)


def test_triplet_no_valid_anchor_is_zero_not_nan():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    for labels in (torch.arange(4), torch.zeros(4, dtype=torch.long)):
        for mining in ("hard", "weighted"):
            loss = TripletLoss(mining=mining)(x, labels)
            (g,) = torch.autograd.grad(loss, x)
            assert loss.item() == 0 and torch.equal(g, torch.zeros_like(g))


def test_triplet_gradcheck():
    x, labels = batch(8, 4, 3, seed=4)
    x.requires_grad_()
    for margin in (0.3, None):
        assert torch.autograd.gradcheck(lambda a: TripletLoss(margin)(a, labels), (x,))
        assert torch.autograd.gradcheck(lambda a: SoftTripletLoss()(a, labels), (x,))


# ---- SoftTripletLoss ----------------------------------------------------------------------------

def _mmt_oracle(x, labels, margin=None, teacher=None):
    """MMT's SoftTripletLoss with its two full sorts (anchor itself removed from the positives)."""
    n = len(labels)
    dist = pairwise_distance_matrix(x, x)
    sim = (labels[:, None] == labels[None, :]).double()
    eye = torch.eye(n, dtype=torch.bool)
    pos_mask = sim.bool() & ~eye
    s_ap, i_ap = torch.sort(dist + -9999999.0 * (~pos_mask).double(), dim=1, descending=True)
    s_an, i_an = torch.sort(dist + 9999999.0 * sim, dim=1, descending=False)
    ap_idx, an_idx = i_ap[:, 0], i_an[:, 0]
    d_ap, d_an = dist.gather(1, ap_idx[:, None])[:, 0], dist.gather(1, an_idx[:, None])[:, 0]
    ls = F.log_softmax(torch.stack([d_ap, d_an], 1), 1)
    if teacher is None:
        return (-margin * ls[:, 0] - (1 - margin) * ls[:, 1]).mean()
    td = pairwise_distance_matrix(teacher, teacher)
    t = torch.stack([td.gather(1, ap_idx[:, None])[:, 0], td.gather(1, an_idx[:, None])[:, 0]], 1)
    return (-torch.softmax(t, 1).detach() * ls).mean(0).sum()


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("margin", [0.0, 0.2])
def test_soft_triplet_hard_targets(device, backend, margin):
    x, labels = batch(16, 8, 4, seed=5)
    loss, g = grads(SoftTripletLoss(margin, backend=backend), x, labels, device=device)
    ref, gr = grads(lambda a, b: _mmt_oracle(a, b, margin), x, labels)
    assert_close(loss, ref)
    assert_close(g, gr)


def test_soft_triplet_margin_zero_is_lf2_softplus():
    # LF2's official loss: softplus(d_ap - d_an), batch-hard mining on Euclidean distances.
    x, labels = batch(24, 12, 6, seed=6)
    a, ga = grads(SoftTripletLoss(0.0), x, labels)
    b, gb = grads(lambda e, l: triplet_loss_fastreid(e, l, margin=None), x, labels)
    c, gc = grads(TripletLoss(margin=None), x, labels)
    assert_close(a, b) and assert_close(a, c)
    assert_close(ga, gb) and assert_close(ga, gc)


@pytest.mark.parametrize("backend", BACKENDS)
def test_soft_triplet_teacher_targets(backend):
    x, labels = batch(16, 8, 4, seed=7)
    teacher = x + 0.3 * torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    loss, g = grads(lambda a, b: SoftTripletLoss(None, backend=backend)(a, b, teacher), x, labels)
    ref, gr = grads(lambda a, b: _mmt_oracle(a, b, teacher=teacher), x, labels)
    assert_close(loss, ref)
    assert_close(g, gr)
    with pytest.raises(ValueError, match="teacher_embeddings"):
        SoftTripletLoss(None)(x, labels)
    with pytest.raises(ValueError, match="teacher_embeddings"):
        SoftTripletLoss()(x, labels, teacher[:3])


# ---- miner --------------------------------------------------------------------------------------

def test_batch_hard_miner_shape_and_content():
    x, labels = batch(12, 5, 3, seed=8)
    labels[4] = 77
    a, p, n = BatchHardMiner()(x, labels)
    assert 4 not in a.tolist() and len(a) == len(p) == len(n) == 11
    dist = pairwise_distance_matrix(x, x)
    for i, j, k in zip(a.tolist(), p.tolist(), n.tolist()):
        pos = (labels == labels[i]) & (torch.arange(12) != i)
        assert labels[j] == labels[i] and j != i and dist[i, j] == dist[i][pos].max()
        assert labels[k] != labels[i] and dist[i, k] == dist[i][labels != labels[i]].min()
    bank, bank_labels = batch(20, 5, 3, seed=9)
    a, p, n = BatchHardMiner()(x, labels, bank, bank_labels)
    assert (p < 20).all() and (bank_labels[p] == labels[a]).all() and (bank_labels[n] != labels[a]).all()


# ---- CrossModalRankingLoss ----------------------------------------------------------------------

def _ranking_oracle(image, text, labels, margin, seed, reduction):
    """Per-anchor loop consuming the same random draws (one [B, B] uniform matrix per direction)."""
    gen = torch.Generator().manual_seed(seed)
    sim = F.normalize(image, dim=1) @ F.normalize(text, dim=1).t()
    total = 0.0
    for s in (sim, sim.t()):
        draw = torch.rand((len(s), len(s)), generator=gen)
        terms = []
        for i in range(len(s)):
            cands = [j for j in range(len(s)) if j != i and (labels is None or labels[j] != labels[i])]
            if not cands:
                continue
            p = s[i, i].detach()
            semi = [j for j in cands if p - margin < s[i, j].detach() < p]
            if semi:
                neg = max(semi, key=lambda j: draw[i, j])
            else:
                neg = max(cands, key=lambda j: s[i, j].detach())
            terms.append(F.relu(margin - s[i, i] + s[i, neg]))
        part = torch.stack(terms).sum() if terms else sim.sum() * 0
        total = total + (part / max(len(terms), 1) if reduction == "mean" else part)
    return total


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("use_labels", [False, True])
def test_cross_modal_ranking_matches_loop(reduction, use_labels):
    img, labels = batch(14, 10, 5, seed=10)
    txt = img + 0.8 * torch.randn(img.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    lab = labels if use_labels else None
    fn = CrossModalRankingLoss(reduction=reduction)
    img_r = img.clone().requires_grad_()
    txt_r = txt.clone().requires_grad_()
    loss = fn(img_r, txt_r, lab, generator=torch.Generator().manual_seed(3))
    img_o = img.clone().requires_grad_()
    txt_o = txt.clone().requires_grad_()
    ref = _ranking_oracle(img_o, txt_o, lab, 0.3, 3, reduction)
    assert_close(loss, ref)
    for got, want in zip(torch.autograd.grad(loss, (img_r, txt_r)), torch.autograd.grad(ref, (img_o, txt_o))):
        assert_close(got, want)


def test_cross_modal_semi_hard_rule_and_fallback():
    # anchor 0: positive sim 0.9; negative 1 sim 0.8 is semi-hard (0.6 < 0.8 < 0.9); negative 2 (0.95)
    # is harder than the positive, so it is not semi-hard. With a single semi-hard negative the
    # draw cannot matter: the loss term is relu(0.3 - 0.9 + 0.8) = 0.2.
    def unit(angle):
        return torch.tensor([torch.cos(torch.tensor(angle)), torch.sin(torch.tensor(angle))], dtype=torch.float64)
    img = torch.stack([unit(0.0), unit(2.0), unit(3.0)])
    txt = torch.stack([unit(float(torch.acos(torch.tensor(0.9)))), unit(float(torch.acos(torch.tensor(0.8)))),
                       unit(float(torch.acos(torch.tensor(0.95))))])
    sim = img @ txt.t()
    fn = CrossModalRankingLoss(margin=0.3)
    from reidkern.nn.losses.cross_modal import _one_direction
    for seed in range(5):
        per, valid = _one_direction(sim, None, 0.3, torch.Generator().manual_seed(seed))
        assert valid.all() and float(per[0]) == pytest.approx(0.2)
    # no semi-hard negative at all (every negative far below): the hardest one is used
    far = torch.tensor([[1.0, -0.9, -0.5], [-0.9, 1.0, -0.8], [-0.5, -0.8, 1.0]], dtype=torch.float64)
    per, _ = _one_direction(far, None, 0.3, None)
    assert per.tolist() == [0.0, 0.0, 0.0]
    per, _ = _one_direction(far, None, 2.0, None)  # now every negative is semi-hard
    assert min(abs(per[0].item() - v) for v in (2.0 - 1.0 - 0.9, 2.0 - 1.0 - 0.5)) < 1e-12
    assert torch.isfinite(fn(img, txt)) and fn(img[:1], txt[:1]).item() == 0.0


def test_cross_modal_gradcheck_and_generator_reproducible():
    img, _ = batch(6, 4, 2, seed=11)
    txt, _ = batch(6, 4, 2, seed=12)
    img.requires_grad_()
    txt.requires_grad_()
    fn = CrossModalRankingLoss(margin=0.5, reduction="mean")
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b, generator=torch.Generator().manual_seed(0)), (img, txt))
    a = fn(img, txt, generator=torch.Generator().manual_seed(4))
    b = fn(img, txt, generator=torch.Generator().manual_seed(4))
    assert a.item() == b.item()


# ---- AM-Softmax / CosFace -----------------------------------------------------------------------

def test_am_softmax_logits_and_loss():
    torch.manual_seed(0)
    feats, labels = batch(9, 6, 5, seed=13)
    mod = AMSoftmaxLoss(6, 5).double()
    cos = torch.stack([torch.stack([(f @ w) / (f.norm() * w.norm()) for w in mod.weight]) for f in feats])
    expected = 30.0 * (cos - 0.35 * F.one_hot(labels, 5).double())
    assert_close(mod.logits(feats, labels), expected)
    assert_close(cosface_logits(feats, mod.weight), 30.0 * cos)
    loss = mod(feats, labels)
    assert_close(loss, F.cross_entropy(expected, labels))
    loss.backward()
    assert mod.weight.grad is not None and torch.isfinite(mod.weight.grad).all()
    with pytest.raises(ValueError, match="labels must lie in"):
        mod(feats, labels + 5)
    with pytest.raises(ValueError, match="features"):
        mod(feats[:, :4], labels)
    with pytest.raises(TypeError, match="labels"):
        mod.logits(feats, labels.double())


# ---- PartDiversityLoss --------------------------------------------------------------------------

def test_part_diversity_cosine_and_overlap():
    parts, _ = batch(15, 7, 2, seed=14)
    parts = parts.view(3, 5, 7)
    expected = torch.stack([
        torch.stack([F.cosine_similarity(p[i], p[j], dim=0) ** 2 for i in range(5) for j in range(5) if i != j]).mean()
        for p in parts]).mean()
    assert_close(PartDiversityLoss()(parts), expected)
    assert PartDiversityLoss()(parts[:, :1]).item() == 0.0
    scores = torch.softmax(torch.randn(2, 11, 4, dtype=torch.double), dim=2)
    over = [sum(float(s[:, i] @ s[:, j]) for i in range(4) for j in range(i + 1, 4)) for s in scores]
    assert_close(PartDiversityLoss("overlap")(scores), torch.tensor(over, dtype=torch.float64).mean())
    assert_close(PartDiversityLoss("overlap", reduction="sum")(scores), torch.tensor(over, dtype=torch.float64).sum())
    x = parts.clone().requires_grad_()
    assert torch.autograd.gradcheck(PartDiversityLoss(), (x,))
    with pytest.raises(ValueError, match="parts"):
        PartDiversityLoss()(parts[0])
    with pytest.raises(ValueError, match="mode"):
        PartDiversityLoss("l2")


# ---- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("loss", [TripletLoss(), TripletLoss(mining="weighted"), SoftTripletLoss()])
def test_loss_bad_input(loss):
    x, labels = batch(6, 4, 2, seed=15)
    with pytest.raises(ValueError, match="labels has length 5"):
        loss(x, labels[:5])
    with pytest.raises(TypeError, match="labels must hold integers"):
        loss(x, labels.double())
    with pytest.raises(ValueError, match="D = 0"):
        loss(x[:, :0], labels)
    with pytest.raises(ValueError, match="embeddings contains NaN"):
        loss(x.masked_fill(x > 1, float("nan")), labels)


def test_constructor_errors():
    with pytest.raises(ValueError, match="margin"):
        TripletLoss(margin=-1)
    with pytest.raises(ValueError, match="mining"):
        TripletLoss(mining="semi")
    for make in (TripletLoss, SoftTripletLoss, BatchHardMiner):  # one list of metric names
        with pytest.raises(ValueError, match=r"metric must be one of \('euclidean', 'sqeuclidean', 'cosine'\)"):
            make(metric="l1")
    with pytest.raises(ValueError, match="margin"):
        SoftTripletLoss(margin=2)
    with pytest.raises(ValueError, match="reduction"):
        CrossModalRankingLoss(reduction="none")


# ---- torch.compile ------------------------------------------------------------------------------

def test_compile_fullgraph():
    x, labels = batch(16, 8, 4, seed=16, dtype=torch.float32)
    for mod in (TripletLoss(0.3), TripletLoss(None), SoftTripletLoss(0.0)):
        compiled = torch.compile(mod, fullgraph=True, backend="aot_eager")
        loss, g = grads(compiled, x, labels)
        ref, gr = grads(mod, x, labels)
        assert_close(loss, ref)
        assert_close(g, gr)


def test_compile_fullgraph_inductor():
    x, labels = batch(16, 8, 4, seed=17, dtype=torch.float32)
    compiled = torch.compile(TripletLoss(0.3), fullgraph=True)
    loss, g = grads(compiled, x, labels)
    ref, gr = grads(lambda a, b: triplet_loss_fastreid(a.double(), b), x, labels)
    assert_close(loss, ref, dtype=torch.float32)
    assert_close(g, gr, dtype=torch.float32)


# ---- cross-process mining -----------------------------------------------------------------------

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dist_worker(rank, world, port, xs, ls, teachers, out_dir):
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=__import__("datetime").timedelta(seconds=60))
    try:
        torch.set_num_threads(1)
        results = {}
        losses = {
            "hard": lambda x, l, t: TripletLoss(0.3, gather=True)(x, l),
            "soft": lambda x, l, t: TripletLoss(None, gather=True)(x, l),
            "weighted": lambda x, l, t: TripletLoss(None, mining="weighted", gather=True)(x, l),
            "softtriplet_teacher": lambda x, l, t: SoftTripletLoss(None, gather=True)(x, l, t),
        }
        for name, fn in losses.items():
            x = xs[rank].clone().requires_grad_()
            loss = fn(x, ls[rank], teachers[rank])
            loss.backward()
            results[name] = (loss.detach(), x.grad)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_cross_process_mining_equals_single_process(tmp_path):
    import torch.multiprocessing as mp
    g = torch.Generator().manual_seed(18)
    sizes = (7, 5)  # uneven batches on the two processes
    xs = [torch.randn(n, 6, generator=g, dtype=torch.float64) for n in sizes]
    ls = [torch.randint(0, 4, (n,), generator=g) for n in sizes]
    ts = [x + 0.2 * torch.randn(x.shape, generator=g, dtype=torch.float64) for x in xs]
    ctx = mp.start_processes(_dist_worker, args=(2, _free_port(), xs, ls, ts, str(tmp_path)), nprocs=2,
                             join=False, start_method="spawn")
    for p in ctx.processes:
        p.join(timeout=120)
    assert all(p.exitcode == 0 for p in ctx.processes), [p.exitcode for p in ctx.processes]
    per_rank = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    x_all, l_all, t_all = torch.cat(xs), torch.cat(ls), torch.cat(ts)
    single = {
        "hard": lambda x: TripletLoss(0.3)(x, l_all),
        "soft": lambda x: TripletLoss(None)(x, l_all),
        "weighted": lambda x: TripletLoss(None, mining="weighted")(x, l_all),
        "softtriplet_teacher": lambda x: SoftTripletLoss(None)(x, l_all, t_all),
    }
    for name, fn in single.items():
        loss, grad = grads(lambda x, _: fn(x), x_all, None)
        for r in range(2):
            got_loss, got_grad = per_rank[r][name]
            assert_close(got_loss, loss, msg=f"{name} loss on rank {r}")
            lo = sum(sizes[:r])
            assert_close(got_grad, grad[lo:lo + sizes[r]], msg=f"{name} grad on rank {r}")
