"""CAL — Learning Concordant Attention via Target-aware Alignment for Visible-Infrared ReID (ICCV 2023).

There is no public code: the paper's method section is the spec and every number it leaves open
is a constructor argument with a documented default (docs/models/cal.md lists them).

Pieces (paper section → reidkern):
  two-stream ResNet-50 (AGW split: stem per modality)  reidkern.models.backbones.two_stream_resnet50
  DRM per modality (scoring net, top-N_k aggregation)  reidkern.nn.TopKTokenAggregation (fused op)
  TSAA, cross-modal and self refinement                 reidkern.nn.TargetAwareAttention (fused op)
  part-aligned centre loss                              reidkern.nn.losses.PartAlignedCenterLoss
  MatchDistill                                          reidkern.models.cal_matchdistill
"""
import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from reidkern.models.backbones.two_stream import two_stream_resnet50
from reidkern.models.cal_matchdistill import (MatchingRecord, match_distill_losses, match_weights,
                                              solve_matching)
from reidkern.nn.attention.cal import TargetAwareAttention, TopKTokenAggregation
from reidkern.nn.losses.part_aligned_center import PartAlignedCenterLoss

__all__ = ["CAL", "sample_partners"]

_FEAT = 2048  # ResNet-50 layer4 channels


def sample_partners(pids, modality, generator=None):
    """For each sample, a random same-identity sample of the other modality (CAL's T_j with
    y_i = y_j for cross-modal refinement). pids, modality: [B] → int64 [B].

    An identity with as many visible as infrared images in the batch (a visible–infrared
    sampler's batch) gets two random bijections — visible → infrared and infrared → visible — so
    that every map is the partner of exactly one sample (TSAA then refines all maps without
    copying them); otherwise each sample draws its partner uniformly.

    Raises ValueError naming ``pids`` when an identity lacks one of the modalities."""
    same = pids[:, None] == pids[None, :]
    ok = same & (modality[:, None] != modality[None, :])
    lonely = ~ok.any(1)
    if bool(lonely.any()):
        bad = sorted(set(pids[lonely].tolist()))
        raise ValueError(f"pids: identities {bad} have images of one modality only in this batch; CAL pairs "
                         "every sample with a same-identity image of the other modality (PCL, MatchDistill) — "
                         "sample batches with a visible–infrared identity sampler")
    noise = torch.rand(ok.shape, generator=generator).to(pids.device)  # uniform pick among the allowed
    partner = torch.where(ok, noise + 1.0, torch.zeros_like(noise)).argmax(1)
    for pid in torch.unique(pids).tolist():
        vis = torch.nonzero((pids == pid) & (modality == 0)).flatten()
        inf = torch.nonzero((pids == pid) & (modality == 1)).flatten()
        if vis.numel() == inf.numel():
            n = vis.numel()
            partner[vis] = inf[torch.randperm(n, generator=generator).to(pids.device)]
            partner[inf] = vis[torch.randperm(n, generator=generator).to(pids.device)]
    return partner


class CAL(nn.Module):
    """CAL for visible–infrared person ReID.

    Args:
        num_classes: training identities (classifier width).
        num_parts: N_p, parts mined per image (default 6; unverified).
        alpha: selection ratio α ∈ (0, 1]; N_k = ceil(α·HW/N_p) tokens per part (default 0.5;
            unverified).
        top_k: optional explicit N_k instead of α (must be ≤ HW at forward).
        pool_sizes: odd max-pool windows of the scoring net (default (1, 3, 5); unverified).
        score_channels: channels each pooled map is reduced to before the part-score conv (256).
        attn_dim, mlp_hidden: TSAA's d and its MLPs' hidden width (256, 512; unverified).
        margin: PCL's σ (default 0.5; unverified); pcl_reduction: "mean" or "sum" (see
            PartAlignedCenterLoss).
        lambda_kd1, lambda_kd2, lambda_dis, lambda_div: λ1–λ4 of
            ``L = L_id + L_pcl + λ1 L_kd1 + λ2 L_kd2 + λ3 L_dis + λ4 L_div`` (defaults 1, 1, 1, 1;
            unverified).
        split_after: last modality-specific backbone stage ("stem" = AGW's split, default).
        last_stride: layer4 stride (1: 288×144 → 18×9 tokens).
        weights: optional local weights, the CLI's ``--weights`` (see :meth:`load_weights`): a
            torchvision ResNet-50 checkpoint (copied into both streams) or a CAL checkpoint.
        backend: reidkern op backend ("cpp", "cuda", "triton", "reference"; None = device default).

    Forward ``model(img, modality, pids=None, partner=None)``:
        img: float [B, 3, H, W], H and W ≥ 16·max(pool_sizes)−15 (the layer4 map must hold the
            largest pool window); 288×144 in the paper's setting.
        modality: int64 [B], 0 = visible, 1 = infrared.
        train mode: pids int64 [B] required; every identity needs both modalities in the batch.
            partner (optional int64 [B]): the same-identity other-modality sample whose map each
            sample's parts refine (default: drawn at random, :func:`sample_partners`). Returns a
            dict of outputs for :meth:`loss`.
        eval mode: returns the test features [B, (N_p+1)·2048]: the BNNeck global feature and the
            N_p self-refined part features, each L2-normalised and scaled by 1/sqrt(N_p+1), the
            visible images' parts put in the frozen MatchDistill order (see :meth:`test_matching`)
            so visible and infrared features compare part by part with no query–gallery pairing.

    Raises:
        ValueError: alpha ∉ (0, 1], even or non-positive pool sizes, top_k < 1
            (construction); img too small for the pools, top_k > HW, modality values other than
            0/1, missing pids in train mode, an identity without both modalities (forward).
    """

    # Every identity classifier (global, refined parts, the DRM's per-part Φ_k): skipped when a
    # checkpoint was trained on another number of identities (reidkern.models.weights.load_weights).
    id_classifier_prefixes = ("classifier.", "part_classifier.", "drm_classifiers.")

    def __init__(self, num_classes, num_parts=6, alpha=0.5, top_k=None, pool_sizes=(1, 3, 5),
                 score_channels=256, attn_dim=256, mlp_hidden=512, margin=0.5, pcl_reduction="mean",
                 lambda_kd1=1.0, lambda_kd2=1.0, lambda_dis=1.0, lambda_div=1.0, split_after="stem",
                 last_stride=1, weights=None, backend=None):
        super().__init__()
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        pool_sizes = tuple(pool_sizes)
        if not pool_sizes or any(not isinstance(s, int) or s < 1 or s % 2 == 0 for s in pool_sizes):
            raise ValueError(f"pool_sizes must be odd positive ints (same-size max-pools), got {pool_sizes}")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
        if not isinstance(num_parts, int) or num_parts < 1:
            raise ValueError(f"num_parts must be a positive int, got {num_parts!r}")
        self.num_classes, self.num_parts, self.alpha, self.top_k = num_classes, num_parts, float(alpha), top_k
        self.pool_sizes, self.last_stride = pool_sizes, last_stride
        self.lambdas = dict(kd1=lambda_kd1, kd2=lambda_kd2, dis=lambda_dis, div=lambda_div)
        self.config = dict(num_classes=num_classes, num_parts=num_parts, alpha=alpha, top_k=top_k,
                           pool_sizes=pool_sizes, score_channels=score_channels, attn_dim=attn_dim,
                           mlp_hidden=mlp_hidden, margin=margin, pcl_reduction=pcl_reduction,
                           lambda_kd1=lambda_kd1, lambda_kd2=lambda_kd2, lambda_dis=lambda_dis,
                           lambda_div=lambda_div, split_after=split_after, last_stride=last_stride)

        self.backbone = two_stream_resnet50(last_stride=last_stride, split_after=split_after)
        # One DRM per modality (the paper's ablation: a shared DRM is worse).
        self.drm = nn.ModuleList(
            TopKTokenAggregation(_FEAT, num_parts, alpha, pool_sizes, score_channels, backend, top_k)
            for _ in range(2))
        # Φ_k: per-modality, per-part classifiers (FC + softmax) of L_dis.
        self.drm_classifiers = nn.ModuleList(
            nn.ModuleList(nn.Linear(_FEAT, num_classes) for _ in range(num_parts)) for _ in range(2))
        self.tsaa = TargetAwareAttention(_FEAT, attn_dim, mlp_hidden, backend)
        # Global branch (the AGW baseline's L_id): GAP → BNNeck (bias frozen) → bias-free classifier.
        self.bottleneck = nn.BatchNorm1d(_FEAT)
        self.bottleneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(_FEAT, num_classes, bias=False)
        # Refined part features: BNNeck + classifier shared by the parts (their posteriors are
        # what L_kd2 compares across the matched parts).
        self.part_bottleneck = nn.BatchNorm1d(_FEAT)
        self.part_bottleneck.bias.requires_grad_(False)
        self.part_classifier = nn.Linear(_FEAT, num_classes, bias=False)
        for lin in [self.classifier, self.part_classifier]:
            nn.init.normal_(lin.weight, std=0.001)
        self.pcl = PartAlignedCenterLoss(margin, pcl_reduction)
        # MatchDistill: the frozen test matching (infrared part u ↔ visible part matching[u]).
        self.register_buffer("matching", torch.arange(num_parts, dtype=torch.int64))
        self.register_buffer("matching_frozen", torch.zeros((), dtype=torch.bool))
        self.match_record = MatchingRecord(num_parts)
        self.last_matching = None
        if weights is not None:
            self.load_weights(weights)

    # --- weights --------------------------------------------------------------------------------
    def load_weights(self, weights, strict=True):
        """Load, by what the checkpoint holds (a local file, a reidkern training checkpoint or a
        state_dict):

        * a CAL state_dict (``drm.*``, ``tsaa.*``, ...): the whole model. Trained on another
          number of identities (fine-tuning on another dataset), the identity classifiers
          (``classifier``, ``part_classifier``, ``drm_classifiers``) are skipped with a
          ``UserWarning`` and keep their fresh initialisation. The MatchDistill record (extra
          state) belongs to the checkpoint's run and is not loaded; the ``matching`` buffers are.
        * anything else: the backbone (:meth:`TwoStreamResNet50.load_weights`: a torchvision
          ResNet-50, copied into both streams, or a two-stream state_dict).

        Returns the ``LoadResult``. Raises ValueError naming ``weights`` for any other mismatch
        (e.g. another ``num_parts`` or ``split_after``) or a checkpoint of another model.
        """
        from reidkern.models.weights import as_state_dict, load_weights

        sd = as_state_dict(weights)
        if any(k.startswith(("drm.", "tsaa.")) for k in sd):
            return load_weights(self, sd, strict=strict)
        return self.backbone.load_weights(sd, strict=strict)

    # --- MatchDistill record (travels in the state_dict as extra state) -------------------------
    def get_extra_state(self):
        return self.match_record.state()

    def set_extra_state(self, state):
        self.match_record.load_state(state)

    def freeze_matching(self):
        """Freeze the most frequent recorded matching (CAL's M̂) as the test matching; returns it.
        Raises RuntimeError when nothing was recorded yet."""
        best = self.match_record.most_frequent()
        if best is None:
            raise RuntimeError("freeze_matching: no matching recorded yet (train first)")
        self.matching.copy_(best)
        self.matching_frozen.fill_(True)
        return best

    def test_matching(self):
        """Matching used by the test features: the frozen one, else the most frequent recorded so
        far, else the identity. int64 [N_p], infrared part u ↔ visible part [u]."""
        if bool(self.matching_frozen):
            return self.matching
        best = self.match_record.most_frequent()
        return self.matching if best is None else best.to(self.matching.device)

    # --- forward --------------------------------------------------------------------------------
    def _check_inputs(self, img, modality):
        if not isinstance(img, torch.Tensor) or img.dim() != 4 or img.shape[1] != 3:
            raise ValueError(f"img must be a float tensor [B, 3, H, W], got "
                             f"{tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__}")
        stride = 16 if self.last_stride == 1 else 32
        h, w = math.ceil(img.shape[2] / stride), math.ceil(img.shape[3] / stride)
        need = max(self.pool_sizes)
        if h < need or w < need:
            side = stride * (need - 1) + 1
            raise ValueError(f"img: {img.shape[2]}x{img.shape[3]} gives a {h}x{w} layer4 map, smaller than the "
                             f"scoring net's {need}x{need} max-pool (pool_sizes={self.pool_sizes}); "
                             f"use images of at least {side}x{side} (CAL: 288x144)")
        if self.top_k is not None and self.top_k > h * w:
            raise ValueError(f"top_k: N_k = {self.top_k} is larger than the {h}x{w} = {h * w} tokens of the map")
        if (not isinstance(modality, torch.Tensor) or modality.shape != (img.shape[0],)
                or modality.dtype.is_floating_point):
            raise ValueError(f"modality must be an int tensor [B] = [{img.shape[0]}] (0 visible, 1 infrared)")
        if bool(((modality != 0) & (modality != 1)).any()):
            raise ValueError("modality: values must be 0 (visible) or 1 (infrared)")

    def _drm(self, fmap, modality, eager=False):
        """Per-modality DRM → parts [B, Np, C], selected Ŝ [B, HW, Np], L_dis logits [B, Np, K]."""
        groups = [(code, torch.nonzero(modality == code).flatten()) for code in (0, 1)]
        groups = [(code, idx) for code, idx in groups if idx.numel()]
        if eager:  # the standard way: split the batch by modality, run each DRM, put it back
            from reidkern.models.cal_eager import drm_eager
            parts, selected = drm_eager(self, fmap, groups)
        else:  # both DRMs in one pass over the batch
            parts, _, selected = TopKTokenAggregation.forward_grouped(self.drm, fmap, modality)
        logits = None
        for code, idx in groups:  # Φ: per-modality, per-part classifiers
            p = parts.index_select(0, idx)
            lg = torch.stack([clf(p[:, u]) for u, clf in enumerate(self.drm_classifiers[code])], 1)
            logits = (lg.new_zeros(fmap.shape[0], *lg.shape[1:]) if logits is None else logits).index_copy(0, idx, lg)
        return parts, selected, logits

    def _refine(self, tokens, parts, partner, eager=False):
        """TSAA self-refinement (own map) and, with partner, cross-refinement (partner's map):
        one layer call for both, each map's keys computed once."""
        if eager:
            from reidkern.models.cal_eager import refine_eager
            return refine_eager(self, tokens, parts, partner)
        B = tokens.shape[0]
        if partner is None:
            return self.tsaa(tokens, parts, return_weights=True) + (None, None)
        index = torch.cat([torch.arange(B, device=tokens.device), partner])
        out, attn = self.tsaa(tokens, torch.cat([parts, parts]), return_weights=True, token_index=index)
        return out[:B], attn[:B], out[B:], attn[B:]

    def forward(self, img, modality, pids=None, partner=None, eager=False):
        self._check_inputs(img, modality)
        if self.training:
            partner = self._check_pairing(modality, pids, partner)
        return self.forward_head(self.forward_backbone(img, modality), modality, pids, partner, eager)

    def _check_pairing(self, modality, pids, partner):
        if pids is None:
            raise ValueError("pids: required in train mode (CAL pairs same-identity samples)")
        if partner is None:
            return sample_partners(pids, modality)
        if not (partner.shape == pids.shape and bool((pids[partner] == pids).all())
                and bool((modality[partner] != modality).all())):
            raise ValueError("partner: must index, for each sample, a same-identity sample of the other modality")
        return partner

    def forward_backbone(self, img, modality):
        """The two-stream ResNet-50's layer4 map [B, 2048, h, w]."""
        return self.backbone(img, modality)["layer4"]

    def forward_head(self, fmap, modality, pids=None, partner=None, eager=False):
        """Everything after the backbone (see ``forward``); fmap [B, 2048, h, w]. ``eager``: run
        DRM and TSAA as the standard blocks do (what :class:`reidkern.models.cal_eager.CALEager`
        calls)."""
        if self.training and partner is None:
            partner = self._check_pairing(modality, pids, partner)
        B = fmap.shape[0]
        if not eager:
            # One channels-last copy: the DRM's max-pools are faster on it and it is the
            # contiguous [B, HW, C] token layout of the top-k aggregation and TSAA.
            fmap = fmap.contiguous(memory_format=torch.channels_last)
        tokens = fmap.flatten(2).transpose(1, 2)  # [B, HW, C]
        parts, selected, dis_logits = self._drm(fmap, modality, eager)
        global_feat = self.bottleneck(fmap.mean((2, 3)))
        if not self.training:
            f_self = self._refine(tokens, parts, None, eager)[0]
            f_self = self.part_bottleneck(f_self.flatten(0, 1)).view(B, self.num_parts, -1)
            vis = modality == 0
            f_self = torch.where(vis[:, None, None], f_self[:, self.test_matching().to(f_self.device)], f_self)
            feats = torch.cat([F.normalize(global_feat, dim=1)[:, None], F.normalize(f_self, dim=-1)], 1)
            return feats.flatten(1) / math.sqrt(self.num_parts + 1)
        f_self, a_self, f_cross, a_cross = self._refine(tokens, parts, partner, eager)
        refined = torch.cat([f_self, f_cross])  # [2B, Np, C]
        part_logits = self.part_classifier(self.part_bottleneck(refined.flatten(0, 1))).view(2 * B, self.num_parts, -1)
        return dict(pids=pids, modality=modality, partner=partner, global_logits=self.classifier(global_feat),
                    dis_logits=dis_logits, selected=selected, self_feats=f_self, cross_feats=f_cross,
                    self_attn=a_self, cross_attn=a_cross, self_logits=part_logits[:B],
                    cross_logits=part_logits[B:])

    # --- losses ---------------------------------------------------------------------------------
    def loss(self, out, record=True):
        """CAL's objective ``L_id + L_pcl + λ1 L_kd1 + λ2 L_kd2 + λ3 L_dis + λ4 L_div`` from the
        train-mode outputs. L_id: CE of the global logits plus the mean CE of the refined parts'
        logits (self and cross); L_dis: Σ over parts of the per-part classifiers' CE, mean over
        the batch; L_div: Σ triu(ŜᵀŜ, 1), mean over the batch. With ``record`` the step's
        matching is counted in the MatchDistill record (and kept in ``last_matching``, a tuple).
        Returns ``(loss, logs)`` with the float value of each term."""
        pids, modality, partner = out["pids"], out["modality"], out["partner"]
        Np = self.num_parts
        l_id = F.cross_entropy(out["global_logits"], pids) + F.cross_entropy(
            torch.cat([out["self_logits"], out["cross_logits"]]).flatten(0, 1),
            pids.repeat(2).repeat_interleave(Np))
        l_pcl = self.pcl(out["self_feats"], out["cross_feats"], pids, modality)
        weights = match_weights(out["self_attn"], out["cross_attn"], partner, modality)
        perm = solve_matching(weights)
        if record:
            self.match_record.update(perm)
        l_kd1, l_kd2 = match_distill_losses(weights, perm, out["self_logits"], out["cross_logits"],
                                            partner, modality)
        l_dis = F.cross_entropy(out["dis_logits"].flatten(0, 1), pids.repeat_interleave(Np),
                                reduction="sum") / pids.shape[0]
        l_div = TopKTokenAggregation.diversity_loss(out["selected"])
        lam = self.lambdas
        total = (l_id + l_pcl + lam["kd1"] * l_kd1 + lam["kd2"] * l_kd2 + lam["dis"] * l_dis
                 + lam["div"] * l_div)
        logs = dict(loss=float(total.detach()), id=float(l_id.detach()), pcl=float(l_pcl.detach()),
                    kd1=float(l_kd1.detach()), kd2=float(l_kd2.detach()),
                    dis=float(l_dis.detach()), div=float(l_div.detach()))
        self.last_matching = tuple(perm.tolist())
        return total, logs

