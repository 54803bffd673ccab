"""DPTI from the field's standard eager blocks: the "eager twin" of :class:`reidkern.models.DPTI`.

The standard way a paper's code writes it: separate W_q/W_k/W_v projections in the encoder; the
learnt part queries expanded over the batch for the template initialisation (matmul + softmax);
the part attention as a textbook cross-attention block whose keys and values are projected from
every one of the final-stage tokens (``template_cross_attention_reference``, SDPA); an eager
batch-hard triplet loss over the full distance matrix (fast-reid's masked max / min). It runs the
model's own parameters (it holds the model), and is the float64 oracle of tests/test_dpti.py and the
baseline of benchmarks/model_cases/dpti.py.
"""
import torch
import torch.nn.functional as F
from torch import nn

from reidkern.nn.attention.reference import template_cross_attention_reference

from reidkern.ops.reference.batch_hard_mining import triplet_loss_fastreid

from .dpti import DPTI

__all__ = ["DPTIEager", "spatial_encoder_reference", "part_template_init_reference", "diversity_loss_reference"]


def _attend(q, k, v, attention):
    if attention == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    w = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)
    return w @ v


def spatial_encoder_reference(layer, f, attention="sdpa"):
    """Eq. 1–4 with three separate projections: ``a = FFN(g + f) + g``. f [B, L, d] → [B, L, d]."""
    B, L, d = f.shape
    H = layer.num_heads
    w_q, w_k, w_v = layer.qkv.weight.chunk(3, dim=0)

    def heads(t):
        return t.view(B, L, H, d // H).transpose(1, 2)

    g = _attend(heads(F.linear(f, w_q)), heads(F.linear(f, w_k)), heads(F.linear(f, w_v)), attention)
    g = g.transpose(1, 2).reshape(B, L, d)
    return layer.ffn(g + f) + g


def part_template_init_reference(module, tokens):
    """Eq. 5–6 with the queries expanded over the batch: ``γ = q_t A_lᵀ`` [B, N, L],
    ``t = W_tv (softmax(γ) A_l)``, ``ρ = softmax_i(mean_j γ_ij)``. Returns (templates, rho)."""
    q = module.part_queries.unsqueeze(0).expand(tokens.shape[0], -1, -1)
    logits = torch.bmm(q, tokens.transpose(1, 2)) * module.scale
    templates = module.to_v(torch.bmm(torch.softmax(logits, dim=-1), tokens))
    return templates, torch.softmax(logits.mean(dim=-1) / module.rho_temperature, dim=-1)


def diversity_loss_reference(parts):
    """Mean over samples and ordered part pairs i ≠ j of cos²(f_i, f_j) (DPTI's modified loss),
    from the [B, N, N] Gram matrix of the normalised parts."""
    B, N, _ = parts.shape
    f = F.normalize(parts, dim=2)
    gram = torch.bmm(f, f.transpose(1, 2))
    off = 1.0 - torch.eye(N, dtype=parts.dtype, device=parts.device)
    return ((gram ** 2) * off).sum(dim=(1, 2)).div(max(N * (N - 1), 1)).mean()


class DPTIEager(nn.Module):
    """Eager twin of ``model`` (shares its parameters; ``state_dict`` names are ``model.*``).

    Same interface as :class:`DPTI`: ``forward_backbone``, ``forward_head``, ``forward``, ``loss``.
    ``attention``: "sdpa" (default) or "eager" (matmul + softmax) in the encoder and part attention.
    Raises TypeError for a model that is not a DPTI, ValueError for another ``attention``.
    """

    def __init__(self, model, attention="sdpa"):
        super().__init__()
        if not isinstance(model, DPTI):
            raise TypeError(f"model: expected a DPTI, got {type(model).__name__}")
        if attention not in ("sdpa", "eager"):
            raise ValueError(f"attention: expected 'sdpa' or 'eager', got {attention!r}")
        self.model, self.attention = model, attention

    def forward_backbone(self, x):
        return self.model.forward_backbone(x)

    def forward_head(self, mid, final):
        m = self.model
        tokens = m.reduce_norm(m.reduce(mid)).flatten(2).transpose(1, 2)
        for layer in m.encoder:
            tokens = spatial_encoder_reference(layer, tokens, self.attention)
        templates, rho = part_template_init_reference(m.templates, tokens)
        context = final.flatten(2).transpose(1, 2)
        parts = templates
        for layer in m.part_attention:
            parts = template_cross_attention_reference(layer, parts, context, attention=self.attention)
        w = rho.detach() if m.detach_rho else rho
        weighted = parts * (m.num_parts * w).unsqueeze(-1) if m.part_weighting else parts
        desc = torch.cat([weighted.flatten(1), tokens.mean(dim=1)], dim=1)
        if not m.training:
            return desc
        return {"logits": m.classifier(m.bottleneck(desc)), "features": desc, "parts": parts, "rho": rho}

    def forward(self, x):
        return self.forward_head(*self.forward_backbone(x))

    def loss(self, outputs, pids):
        m = self.model
        ce = F.cross_entropy(outputs["logits"], pids, label_smoothing=m.label_smoothing)
        tri = triplet_loss_fastreid(outputs["features"], pids, m.triplet.margin, m.triplet.metric)
        div = diversity_loss_reference(outputs["parts"])
        total = m.alpha * ce + m.beta * tri + m.gamma * div
        return total, {"loss_ce": ce.detach(), "loss_triplet": tri.detach(), "loss_diversity": div.detach()}
