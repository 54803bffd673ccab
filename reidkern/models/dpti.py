"""DPTI: Dynamic Part Template Initialization for part-aware person ReID (arXiv 2208.11440).

No public code exists: the paper is the specification (../shared/papers/000_*.txt). Every number the
paper leaves open is a constructor argument; the defaults are reidkern's choices and are marked
*unverified* in the docstrings and in docs/models/dpti.md.

Pipeline (paper §3): ResNet-50 (last stride 1) → the mid-stage map F_l → 1×1 conv to d → spatial
self-attention encoder (Eq. 1–4) → A_l; N learnt part queries build per-image templates from A_l
(Eq. 5–6, :class:`reidkern.nn.PartTemplateInit`); the templates attend over the final-stage map F
(part attention module, :class:`reidkern.nn.TemplateCrossAttention`) → N part vectors; global vector =
GAP of A_l; adaptive part weighting N·ρ_i; descriptor = concat → (N+1)·d; cosine distance at test.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from reidkern.nn import PartDiversityLoss, PartTemplateInit, TemplateCrossAttention, TripletLoss

from ._common import check_float, check_int, check_label_smoothing, check_num_classes, check_pids, eval_features, not_this_model
from .backbones.resnet import STAGE_CHANNELS, STAGES, ResNetTrunk, _check_image
from .weights import LoadResult, WeightsLike, as_state_dict, load_weights

__all__ = ["DPTI", "SpatialEncoder"]


class _Conv1x1Tokens(torch.autograd.Function):
    """A 1×1 convolution from a map to tokens: ``out[b] = x[b]ᵀ Wᵀ (+ bias)``, x [B, C, L] (the
    flattened [B, C, h, w] map, any strides with one of them 1), weight [d, C], bias [d] or None →
    [B, L, d] contiguous. Each sample's map is one GEMM operand read in place, so neither the
    forward (as ``F.linear`` on the transposed map does) nor the weight gradient copies the map
    into token order. The map's gradient is one GEMM over all tokens (faster than per-sample ones
    with the weight repacked each time), given as a [B, C, L] view of [B, L, C] memory."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.bias_dtype = None if bias is None else bias.dtype
        out = torch.bmm(x.transpose(1, 2), weight.t().expand(x.shape[0], -1, -1))
        return out.add_(bias) if bias is not None else out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x_in, w_in = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        # under autocast the forward's GEMMs ran in the output's dtype: so do the backward's, and
        # each gradient comes back in its input's dtype (as through autocast's casts)
        x, weight = x_in.to(grad_out.dtype), w_in.to(grad_out.dtype)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:  # one GEMM over all tokens; the map's gradient is a transposed view
            grad_x = (grad_out @ weight).to(x_in.dtype).transpose(1, 2)
        if ctx.needs_input_grad[1]:
            grad_w = torch.zeros_like(weight)
            for b in range(x.shape[0]):  # Σ_b grad_out[b]ᵀ x[b]ᵀ, each sample's map in place
                grad_w.addmm_(grad_out[b].t(), x[b].t())
            grad_w = grad_w.to(w_in.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(dim=(0, 1)).to(ctx.bias_dtype)
        return grad_x, grad_w, grad_b


class SpatialEncoder(nn.Module):
    """DPTI's spatial self-attention encoder layer (Eq. 1–4).

    ``q_i = W_q f_i, K = W_k F, V = W_v F`` (no biases: the paper's W ∈ R^{d×d});
    ``β_i = softmax(Kᵀ q_i / √d_k)``, ``g_i = V β_i``; ``a_i = FFN(g_i + f_i) + g_i``.
    With ``num_heads`` > 1 the d channels split into heads of d_k = d / heads (concatenated, no
    output projection, as the equations have none). FFN = Linear(d, ffn_dim) → ReLU → Dropout →
    Linear(ffn_dim, d) (the paper says only "a feed-forward network": width and activation are
    unverified).

    state_dict names: ``qkv`` (Linear(d, 3d, bias=False); rows = [W_q; W_k; W_v]), ``ffn.0``,
    ``ffn.3``. The three projections run as three GEMMs on views of that weight: with one GEMM,
    the backward stacks the attention's three gradients into a copy of the [B, L, 3d] output. The
    attention is SDPA on a GPU and matmul + softmax on the CPU.
    Shapes: tokens [B, L, d] → [B, L, d]. Raises ValueError when d is not divisible by num_heads.
    """

    def __init__(self, dim: int, num_heads: int = 1, ffn_dim: Optional[int] = None, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"encoder_heads: {num_heads} does not divide dim {dim}")
        ffn_dim = 2 * dim if ffn_dim is None else ffn_dim
        self.dim, self.num_heads = dim, num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        # not in place: on the Linear's output (a view) an in-place ReLU costs a zero-filled
        # copy of the hidden activations in the backward
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(ffn_dim, dim))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        B, L, d = f.shape
        H = self.num_heads
        q, k, v = (F.linear(f, w).view(B, L, H, d // H).transpose(1, 2) for w in self.qkv.weight.chunk(3))
        if f.device.type == "cpu":
            # β = softmax(qKᵀ/√d_k) kept for the backward: on the CPU, for DPTI's few hundred
            # tokens, SDPA's flash kernel (which recomputes β blockwise) is the slower one
            beta = torch.softmax(torch.matmul(q, k.transpose(-1, -2)).mul_((d // H) ** -0.5), dim=-1)
            g = torch.matmul(beta, v)
        else:
            g = F.scaled_dot_product_attention(q, k, v)
        g = g.transpose(1, 2).reshape(B, L, d)
        return self.ffn(g + f) + g


class DPTI(nn.Module):
    """DPTI person-ReID model (image ReID, occlusion-robust part features).

    Args:
        num_classes: training identities (>= 2) for the identity classifier.
        num_parts: N part templates (>= 1). Default 6 (*unverified*).
        dim: d, width of the encoder, templates and part vectors. Default 256 (*unverified*).
        mid_stage: backbone stage whose map initialises the templates ("layer1".."layer4").
            Default "layer3" (the paper: "the last layer of the penultimate stage").
        final_stage: the stage attended by the part attention module (default "layer4"; earlier
            stages only make small test models).
        encoder_depth, encoder_heads, encoder_ffn_dim: spatial encoder layers (default 1), heads
            (default 1: Eq. 1–4 are single-head) and FFN width (default 2·d) (*unverified*).
        part_layers, part_heads, part_ffn_dim: part-attention layers (default 1), heads (default 8),
            FFN width (default 2·d) (*unverified*). Each layer is a pre-LN cross-attention block with
            a residual on the templates (:class:`reidkern.nn.TemplateCrossAttention`).
        template_scale: logit scale of Eq. 5 (default 1.0: γ_i = A_lᵀ q_{t,i} unscaled, as written).
        query_std: the learnt part queries q_{t,i} start N(0, query_std²) (default 1.0, the
            ``nn.Embedding`` init DETR's learnt queries use). With the unscaled Eq. 5 this makes each
            template's softmax over A_l selective from the first step, so the N templates start
            different; at std d^-½ the softmax is near uniform, every template is ≈ W_tv·mean(A_l),
            and the diversity loss sits at its stationary point cos² = 1 (measured on Con-ReID:
            docs/models/dpti.md).
        reduce_norm: BatchNorm after the 1×1 conv F_l → d (default True; the conv then has no bias).
            The paper says only "1×1 conv"; without a norm the tokens of a post-ReLU map share a
            large common component (mean cosine to the image's mean token 0.95 after the encoder
            at random init), so templates drawn from different tokens are still almost parallel.
        part_weighting: scale part i by N·ρ_i (adaptive part weighting; default True).
        detach_rho: the weights N·ρ_i scale the parts but pass no gradient back to the Eq. 5 mean
            logits (default True; ρ still follows the templates' attention, which trains through
            the templates). With the gradient, the losses reward whichever part is weighted most and
            the encoder learns to align every image's mean token with that part's query: measured on
            Con-ReID (docs/models/dpti.md), ρ one-hot on the same part for all 64 images after 40
            steps, the descriptor then one part ×6 (the paper does not say; *unverified*).
        rho_temperature: ρ = softmax_i(mean_j γ_ij / rho_temperature) (default 1.0, the paper's
            softmax; > 0). The templates need Eq. 5 logits spread enough to select different tokens,
            and the same logits' means then make ρ peaked (see docs/models/dpti.md).
        bnneck: classifier on BatchNorm(descriptor) (BNNeck, Luo et al. 2019; bias frozen) — the
            paper does not say; default True (*unverified*).
        alpha, beta, gamma: loss weights of CE, triplet and diversity (default 1, 1, 1, *unverified*).
        margin: triplet margin (default 0.3); label_smoothing: CE label smoothing (default 0).
        triplet_metric: distance of the batch-hard triplet loss on the descriptor: "cosine"
            (default: the distance the paper ranks with, so the N·ρ_i weighting acts on it the way
            it acts at test time; bounded, where the Euclidean loss on the raw 1,792-d descriptor
            swung between 2 and 13 from batch to batch at random init) or "euclidean" (Bag of
            Tricks). *unverified*: the paper does not say.
        last_stride: stride of layer4 (1, the ReID default: 256×128 → 16×8).
        dropout: in the encoder and part-attention FFNs (default 0).
        backend: reidkern kernel backend of the attention layers and the triplet mining (None:
            the device default; "reference": eager PyTorch).

    Forward ``x`` float [B, 3, H, W] (ImageNet-normalised; any size giving a non-empty map):
        train mode → dict ``logits`` [B, num_classes], ``features`` [B, (N+1)·d] (descriptor),
        ``parts`` [B, N, d] (part vectors before weighting), ``rho`` [B, N] (part presence);
        eval mode → the descriptor [B, (N+1)·d] (compare with cosine distance).

    Raises:
        ValueError: bad arguments (num_classes < 2, num_parts < 1, unknown or misordered stages,
            heads not dividing d, query_std < 0, rho_temperature <= 0, an unknown triplet_metric),
            a non-[B, 3, H, W] input, pids of the wrong shape.
        TypeError: a non-tensor or non-floating input.
    """

    # Skipped when a checkpoint was trained on another number of identities
    # (reidkern.models.weights.load_weights).
    id_classifier_prefixes = ("classifier.",)

    def __init__(self, num_classes: int, num_parts: int = 6, dim: int = 256, mid_stage: str = "layer3",
                 final_stage: str = "layer4", encoder_depth: int = 1, encoder_heads: int = 1,
                 encoder_ffn_dim: Optional[int] = None, part_layers: int = 1, part_heads: int = 8,
                 part_ffn_dim: Optional[int] = None, template_scale: float = 1.0, part_weighting: bool = True,
                 detach_rho: bool = True, rho_temperature: float = 1.0,
                 bnneck: bool = True, alpha: float = 1.0, beta: float = 1.0, gamma: float = 1.0,
                 margin: float = 0.3, label_smoothing: float = 0.0, last_stride: int = 1,
                 dropout: float = 0.0, reduce_norm: bool = True, query_std: float = 1.0,
                 triplet_metric: str = "cosine", backend: Optional[str] = None):
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        self.num_parts = check_int(num_parts, "num_parts", 1, "part templates N")
        self.dim = check_int(dim, "dim", 1)
        stages = STAGES[1:]
        for name, s in (("mid_stage", mid_stage), ("final_stage", final_stage)):
            if s not in stages:
                raise ValueError(f"{name}: expected one of {stages}, got {s!r}")
        if STAGES.index(mid_stage) > STAGES.index(final_stage):
            raise ValueError(f"mid_stage: {mid_stage!r} comes after final_stage {final_stage!r}")
        check_int(encoder_depth, "encoder_depth", 0)
        check_int(part_layers, "part_layers", 1)
        if dim % part_heads:
            raise ValueError(f"part_heads: {part_heads} does not divide dim {dim}")
        self.mid_stage, self.final_stage = mid_stage, final_stage
        self.part_weighting, self.detach_rho, self.backend = bool(part_weighting), bool(detach_rho), backend
        self.alpha, self.beta, self.gamma = (check_float(alpha, "alpha"), check_float(beta, "beta"),
                                             check_float(gamma, "gamma"))
        self.label_smoothing = check_label_smoothing(label_smoothing)
        ffn = 2 * dim
        self.backbone = ResNetTrunk(STAGES[:STAGES.index(final_stage) + 1], last_stride=last_stride)
        self.reduce = nn.Conv2d(STAGE_CHANNELS[mid_stage], dim, 1, bias=not reduce_norm)
        self.reduce_norm = nn.BatchNorm2d(dim) if reduce_norm else nn.Identity()
        self.encoder = nn.ModuleList(
            SpatialEncoder(dim, encoder_heads, encoder_ffn_dim or ffn, dropout) for _ in range(encoder_depth))
        self.templates = PartTemplateInit(dim, num_parts, scale=template_scale, backend=backend,
                                          rho_temperature=check_float(rho_temperature, "rho_temperature", 1e-6))
        nn.init.normal_(self.templates.part_queries, std=check_float(query_std, "query_std"))
        self.part_attention = nn.ModuleList(
            TemplateCrossAttention(dim, num_heads=part_heads, context_dim=STAGE_CHANNELS[final_stage],
                                   shared_norm=False, ffn_dim=part_ffn_dim or ffn, dropout=dropout,
                                   backend=backend)
            for _ in range(part_layers))
        out = (num_parts + 1) * dim
        self.feature_dim = out
        self.bottleneck = nn.BatchNorm1d(out) if bnneck else nn.Identity()
        if bnneck:
            self.bottleneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(out, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)
        if triplet_metric not in ("cosine", "euclidean", "sqeuclidean"):
            raise ValueError(f"triplet_metric: expected 'cosine', 'euclidean' or 'sqeuclidean', got {triplet_metric!r}")
        self.triplet = TripletLoss(margin=margin, metric=triplet_metric, backend=backend)
        self.diversity = PartDiversityLoss("cosine")

    # ---- forward --------------------------------------------------------------------------
    def forward_backbone(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """ResNet-50 stages → ``(F_l [B, C_mid, h, w], F [B, C_final, h', w'])``."""
        _check_image(x)
        feats = self.backbone(x, (self.mid_stage, self.final_stage))
        return feats[self.mid_stage], feats[self.final_stage]

    def descriptor(self, parts: torch.Tensor, rho: torch.Tensor, glob: torch.Tensor) -> torch.Tensor:
        """Adaptive part weighting and concatenation: ``[N ρ_1 f_1, …, N ρ_N f_N, f_g]`` (ρ as a
        constant of the backward with ``detach_rho``)."""
        if self.part_weighting:
            rho = rho.detach() if self.detach_rho else rho
            parts = parts * (self.num_parts * rho).unsqueeze(-1)
        return torch.cat([parts.flatten(1), glob], dim=1)

    def reduce_tokens(self, mid: torch.Tensor) -> torch.Tensor:
        """F_l [B, C_mid, h, w] → the d-channel tokens [B, h·w, d]: ``reduce_norm(reduce(F_l))``.

        The 1×1 conv runs as per-sample GEMMs (:class:`_Conv1x1Tokens`) that read the map in place
        and write the tokens in the encoder's layout, and the norm runs on that memory (a
        channels-last view): on the CPU, mkldnn's 1×1 convolution backward is slower than the GEMMs,
        and its [B, d, h, w] output would be transposed for the encoder.
        """
        t = _Conv1x1Tokens.apply(mid.flatten(2), self.reduce.weight.flatten(1), self.reduce.bias)
        return self.reduce_norm(t.transpose(1, 2).unsqueeze(-1)).squeeze(-1).transpose(1, 2)

    def forward_head(self, mid: torch.Tensor, final: torch.Tensor):
        """Everything after the backbone (see the class docstring for the outputs)."""
        tokens = self.reduce_tokens(mid)
        for layer in self.encoder:
            tokens = layer(tokens)  # A_l
        templates, rho = self.templates(tokens)  # Eq. 5–6; ρ = softmax_i(mean_j γ_ij)
        context = final.flatten(2).transpose(1, 2)  # [B, h'·w', C_final]
        parts = templates
        for layer in self.part_attention:
            parts = layer(parts, context)
        desc = self.descriptor(parts, rho, tokens.mean(dim=1))
        if not self.training:
            return desc
        return {"logits": self.classifier(self.bottleneck(desc)), "features": desc, "parts": parts, "rho": rho}

    def forward(self, x: torch.Tensor):
        return self.forward_head(*self.forward_backbone(x))

    @torch.no_grad()
    def extract(self, x: torch.Tensor, flip: bool = False) -> torch.Tensor:
        """Test descriptor [B, (N+1)·d] in eval mode (the mode is restored); ``flip`` averages it
        with the descriptor of the mirrored image."""
        return eval_features(self, x, flip)

    # ---- loss -----------------------------------------------------------------------------
    def loss(self, outputs: Dict[str, torch.Tensor], pids: torch.Tensor):
        """``α·CE(logits) + β·triplet(descriptor) + γ·diversity(parts)`` (paper §3.5).

        The triplet loss is batch-hard (Hermans et al. 2017) on the (N+1)·d descriptor; the
        diversity loss is the paper's modified one, the mean over i ≠ j of cos²(f_p,i, f_p,j).
        Returns ``(loss, logs)``; logs hold the detached terms. Raises ValueError/TypeError for pids
        that are not integer labels [B].
        """
        logits = outputs["logits"]
        pids = check_pids(pids, logits.shape[0], logits.device)
        ce = F.cross_entropy(logits, pids, label_smoothing=self.label_smoothing)
        tri = self.triplet(outputs["features"], pids)
        div = self.diversity(outputs["parts"])
        total = self.alpha * ce + self.beta * tri + self.gamma * div
        return total, {"loss_ce": ce.detach(), "loss_triplet": tri.detach(), "loss_diversity": div.detach()}

    # ---- weights --------------------------------------------------------------------------
    def load_weights(self, weights: WeightsLike, strict: bool = True) -> LoadResult:
        """Load a DPTI checkpoint (this class's state_dict) or a torchvision ResNet-50 file/state_dict
        into the backbone (``fc.*`` and stages past ``final_stage`` ignored).

        A DPTI checkpoint trained on another number of identities loads everything but the
        identity classifier (``classifier.weight``), which keeps its fresh initialisation; a
        ``UserWarning`` and ``LoadResult.skipped_keys`` name it.

        Raises ValueError naming ``weights`` for a checkpoint of another model (e.g. a ViT or
        LA-Transformer one), and listing missing/unexpected/mismatched keys for a DPTI checkpoint
        of another configuration (see ``reidkern.models.weights.load_weights``).
        """
        sd = as_state_dict(weights)
        if "templates.part_queries" in sd:
            return load_weights(self, sd, strict=strict)
        if "conv1.weight" in sd and "layer1.0.conv1.weight" in sd:  # torchvision ResNet-50
            later = tuple(f"{s}." for s in STAGES[STAGES.index(self.final_stage) + 1:])
            return load_weights(self.backbone, sd, strict=strict, ignore_prefixes=("fc.",) + later)
        raise not_this_model("DPTI", sd, "DPTI keys such as 'templates.part_queries', or a torchvision "
                             "ResNet-50 with 'conv1.weight'")
