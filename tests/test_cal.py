"""CAL (reidkern.models.CAL): equal to its eager twin in float64, its layers equal to the standard
blocks, PCL and MatchDistill against naive loops, bad input, the matching record in checkpoints."""
import io
import itertools

import pytest
import torch
import torch.nn.functional as F

from reidkern.models.cal import CAL, sample_partners
from reidkern.models.cal_eager import CALEager
from reidkern.models.cal_matchdistill import (MatchingRecord, match_distill_losses, match_weights,
                                              solve_matching)
from reidkern.nn import TargetAwareAttention, TopKTokenAggregation
from reidkern.nn.attention import reference as attn_ref
from reidkern.nn.losses.part_aligned_center import PartAlignedCenterLoss
from reidkern.testing import assert_close, randomize_batchnorm

# Two identities, two visible and two infrared images each.
PIDS = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
MODALITY = torch.tensor([0, 1, 0, 1, 1, 0, 1, 0])
PARTNER = torch.tensor([1, 2, 3, 0, 5, 4, 7, 6])


def _small_cal(**kw):
    # pool sizes (1, 3): 48x48 images give a 3x3 layer4 map, the smallest the pools accept.
    args = dict(num_parts=3, alpha=0.6, pool_sizes=(1, 3), score_channels=8, attn_dim=8, mlp_hidden=16)
    args.update(kw)
    return CAL(5, **args)


def _grads(model, loss):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params, allow_unused=True)


def test_layers_match_standard_blocks_float64():
    torch.manual_seed(0)
    drm = TopKTokenAggregation(12, num_parts=3, alpha=0.7, pool_sizes=(1, 3, 5), reduced_channels=6).double()
    x = torch.randn(2, 12, 7, 4, dtype=torch.float64, requires_grad=True)
    got, ref = drm(x), attn_ref.top_k_token_aggregation_reference(drm, x)
    w = [torch.randn_like(r) for r in ref]
    for g, r in zip(got, ref):
        assert_close(g, r)
    ga = torch.autograd.grad(sum((g * v).sum() for g, v in zip(got, w)), [x] + list(drm.parameters()))
    gb = torch.autograd.grad(sum((r * v).sum() for r, v in zip(ref, w)), [x] + list(drm.parameters()))
    for a, b in zip(ga, gb):
        assert_close(a, b)

    tsaa = TargetAwareAttention(12, attn_dim=5, hidden_dim=7).double()
    tokens = torch.randn(3, 9, 12, dtype=torch.float64, requires_grad=True)
    parts = torch.randn(5, 4, 12, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([2, 0, 1, 2, 2])
    out, attn = tsaa(tokens, parts, return_weights=True, token_index=index)
    out_r, attn_r = attn_ref.target_aware_attention_reference(tsaa, tokens[index], parts, return_weights=True)
    assert_close(out, out_r)
    assert_close(attn, attn_r)
    wo, wa = torch.randn_like(out), torch.randn_like(attn)
    params = [tokens, parts] + [p for n, p in tsaa.named_parameters() if n != "mlp_t.2.bias"]
    ga = torch.autograd.grad((out * wo).sum() + (attn * wa).sum(), params)
    gb = torch.autograd.grad((out_r * wo).sum() + (attn_r * wa).sum(), params, retain_graph=True)
    for a, b in zip(ga, gb):
        assert_close(a, b)
    # MLP1's last bias only shifts each query's logits by a constant: no gradient through softmax.
    gbias = torch.autograd.grad((out_r * wo).sum(), tsaa.mlp_t[2].bias)[0]
    assert gbias.abs().max() < 1e-12
    # Each map serving the same number of query sets takes the grouped path (no token copies).
    index = torch.tensor([0, 1, 2, 2, 0, 1])
    parts6 = torch.randn(6, 4, 12, dtype=torch.float64)
    out, attn = tsaa(tokens, parts6, return_weights=True, token_index=index)
    out_r, attn_r = attn_ref.target_aware_attention_reference(tsaa, tokens[index], parts6, return_weights=True)
    assert_close(out, out_r)
    assert_close(attn, attn_r)
    with pytest.raises(ValueError, match="token_index"):
        tsaa(tokens, parts, token_index=torch.tensor([0, 3, 1, 1, 1]))


def test_cal_equals_eager_twin_float64():
    torch.manual_seed(1)
    model = _small_cal().double()
    randomize_batchnorm(model)
    twin = CALEager(model)
    img = torch.randn(8, 3, 48, 48, dtype=torch.float64)
    out, out_t = model(img, MODALITY, PIDS, PARTNER), twin(img, MODALITY, PIDS, PARTNER)
    assert not torch.equal(out["self_feats"], out_t["self_feats"])  # computed differently: rounding differs
    for key in ("global_logits", "dis_logits", "selected", "self_feats", "cross_feats", "self_attn",
                "cross_attn", "self_logits", "cross_logits"):
        assert_close(out[key], out_t[key])
    loss, logs = model.loss(out)
    perm = model.last_matching
    loss_t, logs_t = twin.loss(out_t)  # the twin holds the model: it records in the same place
    assert model.last_matching == perm and model.match_record.counts[perm] == 2
    for key in ("id", "pcl", "kd1", "kd2", "dis", "div"):
        assert logs[key] == pytest.approx(logs_t[key], rel=1e-10, abs=1e-12)
    for a, b in zip(_grads(model, loss), _grads(model, loss_t)):
        assert (a is None) == (b is None) or (a is None and b.abs().max() < 1e-12)
        if a is not None and b is not None:
            assert_close(a, b)
    model.eval(), twin.eval()
    feats = model(img, MODALITY)
    assert feats.shape == (8, 4 * 2048)
    assert_close(feats, twin(img, MODALITY))
    assert_close(feats.norm(dim=1), torch.ones(8, dtype=torch.float64))


def test_pcl_matches_paper_sum():
    torch.manual_seed(2)
    pids = torch.tensor([3, 3, 7, 7, 3, 9, 9, 7, 9])
    modality = torch.tensor([0, 1, 0, 1, 1, 0, 1, 1, 0])
    fs, fc = torch.randn(9, 2, 4, dtype=torch.float64), torch.randn(9, 2, 4, dtype=torch.float64)
    sigma = 3.0
    centres = {}
    for y in (3, 7, 9):
        for k in (0, 1):
            sel = [i for i in range(9) if pids[i] == y and modality[i] == k]
            centres[y, k] = fs[sel].flatten(1).mean(0)
    g = sum((fc[i].flatten() - centres[int(pids[i]), int(modality[i])]).norm() for i in range(9))
    s = sum(max(sigma - (centres[a, ka] - centres[b, kb]).norm(), 0)
            for (ka, kb) in ((1, 0), (1, 1), (0, 0)) for a in (3, 7, 9) for b in (3, 7, 9) if a != b)
    got = PartAlignedCenterLoss(sigma, reduction="sum")(fs, fc, pids, modality)
    assert_close(got, g + s)
    mean = PartAlignedCenterLoss(sigma)(fs, fc, pids, modality)
    assert mean < got
    with pytest.raises(ValueError, match="pids"):
        PartAlignedCenterLoss()(fs[:3], fc[:3], pids[:3], modality[:3])  # id 7: visible only


def test_matchdistill_against_brute_force():
    torch.manual_seed(3)
    B, Np, L, K = 8, 4, 10, 6
    self_attn = torch.softmax(torch.randn(B, Np, L, dtype=torch.float64), -1)
    cross_attn = torch.softmax(torch.randn(B, Np, L, dtype=torch.float64), -1)
    w = match_weights(self_attn, cross_attn, PARTNER, MODALITY)
    perm = solve_matching(w)
    total = w.sum(0)
    best = max(itertools.permutations(range(Np)), key=lambda p: sum(total[u, p[u]] for u in range(Np)))
    assert tuple(perm.tolist()) == best
    sl, cl = torch.randn(B, Np, K, dtype=torch.float64), torch.randn(B, Np, K, dtype=torch.float64)
    kd1, kd2 = match_distill_losses(w, perm, sl, cl, PARTNER, MODALITY)
    e_kd1 = e_kd2 = 0.0
    for i in range(B):
        p = int(PARTNER[i])
        for u in range(Np):
            v = int(perm[u])
            if MODALITY[i] == 1:  # infrared queries u on the visible partner's map
                w_iu = cross_attn[i, u] @ self_attn[p, v]
                pu, pv = F.softmax(cl[i, u], -1), F.softmax(sl[p, v], -1)
            else:  # visible queries v on the infrared partner's map
                w_iu = cross_attn[i, v] @ self_attn[p, u]
                pu, pv = F.softmax(cl[i, v], -1), F.softmax(sl[p, u], -1)
            e_kd1 -= w_iu / B
            e_kd2 += (pu * (pu.log() - pv.log())).sum() / B
    assert_close(kd1, e_kd1)
    assert_close(kd2, e_kd2)


def test_matching_record_survives_checkpoint():
    torch.manual_seed(4)
    model = _small_cal()
    img = torch.randn(8, 3, 48, 48)
    model.train()
    model.loss(model(img, MODALITY, PIDS, PARTNER))
    for perm in ([2, 0, 1], [2, 0, 1], [0, 1, 2]):
        model.match_record.update(perm)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    restored = _small_cal()
    restored.load_state_dict(torch.load(buf, weights_only=True))
    assert restored.match_record.counts == model.match_record.counts
    assert restored.match_record.total() == 4
    assert restored.test_matching().tolist() == model.test_matching().tolist() == [2, 0, 1]
    restored.freeze_matching()
    restored.match_record.update([0, 1, 2]), restored.match_record.update([0, 1, 2])
    assert restored.test_matching().tolist() == [2, 0, 1]  # frozen: later counts do not move it
    again = _small_cal()
    again.load_state_dict(restored.state_dict())
    assert bool(again.matching_frozen) and again.test_matching().tolist() == [2, 0, 1]
    with pytest.raises(ValueError, match="perm"):
        MatchingRecord(3).update([0, 0, 1])


def test_bad_input_names_the_argument():
    for alpha in (0, 1.5, -0.2, True):
        with pytest.raises(ValueError, match="alpha"):
            _small_cal(alpha=alpha)
    with pytest.raises(ValueError, match="pool_sizes"):
        _small_cal(pool_sizes=(1, 2))
    model = _small_cal()
    img = torch.randn(8, 3, 48, 48)
    with pytest.raises(ValueError, match="img"):
        model(torch.randn(8, 3, 48, 32), MODALITY, PIDS)  # 3x2 map < the 3x3 pool
    with pytest.raises(ValueError, match="top_k"):
        _small_cal(top_k=10)(img, MODALITY, PIDS)  # 3x3 = 9 tokens
    with pytest.raises(ValueError, match="pids"):
        model(img, torch.tensor([0, 0, 0, 0, 1, 0, 1, 0]), PIDS)  # identity 0: visible only
    with pytest.raises(ValueError, match="pids"):
        model(img, MODALITY)
    with pytest.raises(ValueError, match="modality"):
        model(img, torch.tensor([0, 1, 2, 1, 1, 0, 1, 0]), PIDS)
    with pytest.raises(ValueError, match="partner"):
        model(img, MODALITY, PIDS, partner=torch.arange(8))


def test_sample_partners_pairs_other_modality_same_identity():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        p = sample_partners(PIDS, MODALITY, generator=g)
        assert (PIDS[p] == PIDS).all() and (MODALITY[p] != MODALITY).all()
        assert torch.bincount(p, minlength=8).eq(1).all()  # equal counts: every map partners once
    pids, modality = torch.tensor([0, 0, 0, 1, 1]), torch.tensor([0, 0, 1, 0, 1])
    p = sample_partners(pids, modality, generator=g)
    assert (pids[p] == pids).all() and (modality[p] != modality).all()


@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_topk_aggregate_part_with_underflowed_scores(backend):
    # A collapsed softmax leaves a part whose kept scores sum to a denormal: its reciprocal
    # overflows, so the kernels divide by the sum instead (P stays the weighted mean, finite).
    import reidkern
    from reidkern.ops.topk_token_aggregate import topk_token_aggregate

    if backend == "cpp" and not reidkern.build_info()["native"]:
        pytest.skip("compiled library not built")
    scores = torch.zeros(1, 6, 2)
    scores[0, :, 0] = torch.tensor([2.5e-44, 0, 0, 0, 0, 0])
    scores[0, :, 1] = torch.tensor([0.5, 0.25, 0.1, 0.1, 0.05, 0.0])
    tokens = torch.randn(1, 6, 5, requires_grad=True)
    parts, _, _ = topk_token_aggregate(scores, tokens, k=3, backend=backend)
    assert torch.isfinite(parts).all()
    # Part 0 is token 0 scaled by s/s with s denormal (few significant bits): finite and bounded.
    assert parts[0, 0].abs().max() <= tokens[0, 0].abs().max() * 1.01
    ref = topk_token_aggregate(scores.double(), tokens.detach().double(), k=3, backend="reference")[0]
    assert_close(parts[0, 1].double(), ref[0, 1], rtol=1e-5, atol=1e-6)
    if backend == "cpp":  # (the eager reference divides the gradient by Z: inf · 0 there)
        grad, = torch.autograd.grad(parts.sum(), tokens)
        assert torch.isfinite(grad).all()


def test_checkpoint_of_another_number_of_identities_skips_only_the_classifiers(tmp_path):
    """``reidkern train cal --weights`` of a CAL trained on another dataset (a reidkern training
    checkpoint, MatchDistill record included): every tensor loads but the identity classifiers,
    which keep their fresh init and are reported; other mismatches raise naming ``weights``."""
    from reidkern.engine.checkpoint import save_checkpoint

    torch.manual_seed(4)
    src = CAL(7, num_parts=3, alpha=0.6, pool_sizes=(1, 3), score_channels=8, attn_dim=8, mlp_hidden=16)
    src.match_record.update(torch.tensor([2, 0, 1]))
    src.freeze_matching()
    path = str(tmp_path / "other_dataset.pt")
    save_checkpoint(path, recipe="cal", model=src.state_dict())
    torch.manual_seed(5)
    fresh = _small_cal().state_dict()
    torch.manual_seed(5)
    with pytest.warns(UserWarning, match=r"another number of identities[\s\S]*classifier\.weight', \(7, 2048\), \(5, 2048\)"):
        dst = _small_cal(weights=path)
    heads = {k for k in fresh if k.startswith(CAL.id_classifier_prefixes)}
    assert len(heads) == 2 + 2 * 3 * 2
    for k, v in dst.state_dict().items():
        if k != "_extra_state":
            assert torch.equal(v, fresh[k] if k in heads else src.state_dict()[k]), k
    assert dst.match_record.total() == 0 and dst.test_matching().tolist() == [2, 0, 1]
    with pytest.raises(ValueError, match=r"weights do not match CAL[\s\S]*drm\.0"):
        _small_cal().load_weights(CAL(7, num_parts=4, alpha=0.6, pool_sizes=(1, 3), score_channels=8,
                                      attn_dim=8, mlp_hidden=16).state_dict())
