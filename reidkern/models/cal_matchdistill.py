"""CAL's MatchDistill: match visible and infrared part queries, distil across the matched pairs,
and keep a record of the matchings so the most frequent one can be frozen for test.

Source: CAL (ICCV 2023), "MatchDistill". For a visible map X^V and a same-identity infrared
sample's queries, the bipartite edge weights are inner products of spatial attention maps,
``w(E_{k1,k2}) = <S(X^V, P^I_{k1}), S(X^V, P^V_{k2})>`` (the paper prints P^I_{k2} in the second
slot; the graph joins P^I to P^V, so it is P^V), and symmetrically on infrared maps. The matching
maximising the summed weights (Kuhn–Munkres: SciPy ``linear_sum_assignment``) gives
``L_kd1 = −Σ_{e∈M} w(e)`` and ``L_kd2 = Σ_{(u,v)∈M} KL(p_u^{V,I} ‖ p_v^{V,V})``.

Choices the paper leaves open (documented in docs/models/cal.md): one matching per training step,
solved on the weights summed over the batch and over both directions (so that a single
visible↔infrared permutation is recorded and frozen for test); both losses averaged over the
batch's samples and summed over the matched pairs.
"""
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment


def match_weights(self_attn, cross_attn, partner, modality):
    """Per-sample bipartite weights, oriented [infrared part, visible part].

    self_attn, cross_attn: [B, Np, L] spatial attention S of each sample's own queries on its own
    map, and of its queries on its partner's map (partner: int64 [B], a same-identity sample of the
    other modality). For an infrared sample i (queries P^I_i on visible map X^V_p):
    ``W_i[u, v] = <S(X^V_p, P^I_{i,u}), S(X^V_p, P^V_{p,v})>``; for a visible sample (queries P^V on
    an infrared map) the same product is transposed to keep rows = infrared parts. → [B, Np, Np].
    """
    w = torch.matmul(cross_attn, self_attn.index_select(0, partner).transpose(1, 2))
    visible = (modality == 0)[:, None, None]
    return torch.where(visible, w.transpose(1, 2), w)


def solve_matching(weights):
    """The maximum-weight perfect matching of weights summed over the batch.

    weights [B, Np, Np] (rows infrared parts, columns visible parts) → int64 [Np] ``perm`` with
    infrared part u matched to visible part ``perm[u]`` (SciPy ``linear_sum_assignment``)."""
    total = weights.detach().sum(0).double().cpu().numpy()
    rows, cols = linear_sum_assignment(total, maximize=True)
    perm = np.empty(total.shape[0], dtype=np.int64)
    perm[rows] = cols
    return torch.from_numpy(perm)


def match_distill_losses(weights, perm, self_logits, cross_logits, partner, modality):
    """``(L_kd1, L_kd2)`` for the matching ``perm`` (infrared part u ↔ visible part perm[u]).

    weights: [B, Np, Np] from :func:`match_weights`. self_logits / cross_logits: [B, Np, K] class
    logits of the self- and cross-refined part features. For an infrared sample i, the cross
    feature of its part u (on the visible partner's map) is distilled towards the partner's own
    visible part perm[u]: ``KL(p^{V,I}_{i,u} ‖ p^{V,V}_{p,perm[u]})``; for a visible sample, its
    part perm[u] on the infrared partner's map towards the partner's infrared part u.
    L_kd1 = −mean_i Σ_u W_i[u, perm[u]]; L_kd2 = mean_i Σ_u KL. Scalars.
    """
    B, Np, _ = weights.shape
    perm = perm.to(weights.device)
    u = torch.arange(Np, device=weights.device)
    kd1 = -weights[:, u, perm].sum(1).mean()
    inf = (modality == 1)[:, None]
    # Part index of the cross (student-of-the-other-modality) feature and of the partner's own part.
    cross_idx = torch.where(inf, u[None], perm[None]).expand(B, Np)
    own_idx = torch.where(inf, perm[None], u[None]).expand(B, Np)
    log_p = F.log_softmax(cross_logits.gather(1, cross_idx[..., None].expand(-1, -1, cross_logits.shape[2])), -1)
    partner_logits = self_logits.index_select(0, partner)
    log_q = F.log_softmax(partner_logits.gather(1, own_idx[..., None].expand(-1, -1, self_logits.shape[2])), -1)
    kd2 = (log_p.exp() * (log_p - log_q)).sum(-1).sum(1).mean()  # KL(p ‖ q)
    return kd1, kd2


class MatchingRecord:
    """How often each visible↔infrared part matching was chosen during training.

    ``update(perm)`` counts a matching; ``most_frequent()`` is CAL's M̂ (ties: the one seen first);
    ``state()`` / ``load_state(state)`` give and take int64 tensors (``matchings [M, Np]``,
    ``counts [M]``) so the record travels in a state_dict and loads with ``weights_only=True``.
    """

    def __init__(self, num_parts):
        self.num_parts = num_parts
        self.counts = OrderedDict()

    def update(self, perm):
        key = tuple(int(v) for v in perm)
        if sorted(key) != list(range(self.num_parts)):
            raise ValueError(f"perm must be a permutation of range({self.num_parts}), got {key}")
        self.counts[key] = self.counts.get(key, 0) + 1

    def most_frequent(self):
        """int64 [Np] of the most frequent matching, or None before any update."""
        if not self.counts:
            return None
        best = max(self.counts.values())
        return torch.tensor(next(k for k, c in self.counts.items() if c == best), dtype=torch.int64)

    def total(self):
        return sum(self.counts.values())

    def clear(self):
        self.counts.clear()

    def state(self):
        keys = list(self.counts)
        return {"matchings": torch.tensor(keys, dtype=torch.int64).reshape(len(keys), self.num_parts),
                "counts": torch.tensor([self.counts[k] for k in keys], dtype=torch.int64)}

    def load_state(self, state):
        matchings, counts = state["matchings"], state["counts"]
        if matchings.dim() != 2 or matchings.shape[1] != self.num_parts or counts.shape != matchings.shape[:1]:
            raise ValueError(f"state: expected matchings [M, {self.num_parts}] and counts [M], got "
                             f"{tuple(matchings.shape)} and {tuple(counts.shape)}")
        self.counts = OrderedDict((tuple(int(v) for v in m), int(c)) for m, c in zip(matchings.tolist(), counts.tolist()))
