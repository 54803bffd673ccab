"""LA-Transformer (Sharma, Kapil & Chapman 2021, "Person Re-Identification with a Locally Aware
Transformer"), as its official code (SiddhantKapil/LA-Transformer) builds it, plus the three
improvements of the course note ../shared/papers/003_*.txt (each a flag).

Official structure: timm ViT-B/16 at 224×224 (12 blocks, final norm) → 14×14 patch tokens + CLS;
14 parts = the mean of each row of the token grid; globally enhanced local tokens
``q_i = (cls + λ·p_i) / (1 + λ)``, λ = 8; 14 ClassBlocks (Linear 768→256, BN, Dropout 0.5,
Linear 256→#ids); loss = the sum of the 14 cross-entropies. Test features: each part L2-normalised
and scaled by 1/√14, concatenated (10,752-d).

Note's improvements: ``y_pooling`` (column parts averaged with the row parts), ``metric_loss``
(AM-Softmax classifiers + batch-hard triplet loss), ``flip_test`` (features averaged with those of
the mirrored image).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from reidkern.nn import TripletLoss
from reidkern.nn.classifiers import PartClassBlocks
from reidkern.nn.part_ops import grid_part_pool

from ._common import check_float, check_int, check_label_smoothing, check_num_classes, check_pids, eval_features, not_this_model
from .backbones.vit import VisionTransformer, _pair
from .weights import LoadResult, WeightsLike, as_state_dict, load_weights

__all__ = ["LATransformer", "official_parameter_count"]

_OFFICIAL_BLOCK = {"add_block.0.weight": "fc1_weight", "add_block.0.bias": "fc1_bias",
                   "add_block.1.weight": "bn_weight", "add_block.1.bias": "bn_bias",
                   "add_block.1.running_mean": "bn_running_mean", "add_block.1.running_var": "bn_running_var",
                   "classifier.0.weight": "fc2_weight", "classifier.0.bias": "fc2_bias"}


class LATransformer(nn.Module):
    """LA-Transformer person-ReID model.

    Args:
        num_classes: training identities (>= 2).
        img_size: input (H, W) or an int (official: 224), a multiple of ``patch_size`` (the parts are
            whole patch rows). The patch grid must match the position embedding: an image of
            another size raises ValueError naming ``img_size``.
        patch_size, embed_dim, depth, num_heads: the ViT (official ViT-B/16: 16, 768, 12, 12);
            smaller values make small test models.
        lmbd: λ of the globally enhanced local tokens (official 8).
        bottleneck_dim: width of each ClassBlock's bottleneck (official 256).
        dropout: ClassBlock dropout (official 0.5).
        y_pooling: the note's improvement: part i = mean of (row i's mean, column i's mean); needs a
            square patch grid.
        metric_loss: the note's improvement: AM-Softmax (CosFace) classifiers (no bias) with
            ``am_margin`` (default 0.35) and ``am_scale`` (default 30), plus a batch-hard triplet loss
            (``triplet_margin``, default 0.3) on the concatenated GELTs (the note gives neither margin
            nor the triplet's feature: *unverified*).
        flip_test: the note's improvement: :meth:`extract` averages the features of the image and
            of its mirror.
        test_gelt: test features from the GELTs instead of the plain row means. Default False, as the
            official test code (``LATransformerTest`` leaves the CLS blend out).
        drop_path_rate: ViT stochastic depth (official 0).
        backend: reidkern kernel backend of the triplet mining.
        label_smoothing: ε of the part cross-entropies (label-smoothed CE, on the AM-Softmax
            logits with ``metric_loss``); default 0 = the official plain cross-entropy.

    Forward ``x`` float [B, 3, H, W] with (H, W) = img_size:
        train mode → dict ``logits`` [B, P, num_classes] (P = grid rows, 14; with metric_loss these
        are ``am_scale·cos`` without the margin), ``gelt`` [B, P, embed_dim];
        eval mode → test features [B, P·embed_dim] (per-part L2 norm × 1/√P).

    Raises:
        ValueError: bad arguments (num_classes < 2, non-positive sizes, img_size not a multiple of
            patch_size, y_pooling on a non-square grid, am_scale <= 0, negative lmbd or am_margin,
            dropout outside [0, 1]), an image of the wrong size or shape, pids of the wrong shape.
        TypeError: a non-tensor or non-floating input.
    """

    # The 14 ClassBlocks' last Linear (256 → identities): skipped when a checkpoint was trained on
    # another number of identities (reidkern.models.weights.load_weights).
    id_classifier_prefixes = ("classifiers.fc2_",)

    def __init__(self, num_classes: int, img_size=224, patch_size: int = 16, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, lmbd: float = 8.0, bottleneck_dim: int = 256,
                 dropout: float = 0.5, y_pooling: bool = False, metric_loss: bool = False,
                 flip_test: bool = False, test_gelt: bool = False, am_margin: float = 0.35,
                 am_scale: float = 30.0, triplet_margin: float = 0.3, drop_path_rate: float = 0.0,
                 backend: Optional[str] = None, label_smoothing: float = 0.0):
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        self.img_size = _pair(img_size, "img_size")
        self.label_smoothing = check_label_smoothing(label_smoothing)
        self.lmbd = check_float(lmbd, "lmbd")
        self.y_pooling, self.metric_loss = bool(y_pooling), bool(metric_loss)
        self.flip_test, self.test_gelt = bool(flip_test), bool(test_gelt)
        self.am_margin = check_float(am_margin, "am_margin")
        if check_float(am_scale, "am_scale") == 0:  # s·cos ≡ 0: constant logits, nothing learns
            raise ValueError(f"am_scale: expected a number > 0, got {am_scale!r}")
        self.backend = backend
        patch_size = check_int(patch_size, "patch_size", 1)
        if any(s % patch_size for s in self.img_size):
            # the patch rows are the parts: a remainder would be cut off silently by the stride
            raise ValueError(f"img_size: {self.img_size} is not a multiple of patch_size {patch_size} "
                             "(LA-Transformer's parts are whole rows of non-overlapping patches)")
        self.backbone = VisionTransformer(img_size=self.img_size, patch_size=patch_size,
                                          stride_size=patch_size, embed_dim=check_int(embed_dim, "embed_dim", 1),
                                          depth=check_int(depth, "depth", 1), num_heads=num_heads,
                                          drop_path_rate=drop_path_rate)
        gh, gw = self.backbone.grid_size
        if y_pooling and gh != gw:
            raise ValueError(f"img_size: y_pooling averages row part i with column part i and needs a square "
                             f"patch grid, got {gh}x{gw} for {self.img_size}")
        self.grid = (gh, gw)
        self.num_parts = gh
        self.embed_dim = embed_dim
        self.feature_dim = gh * embed_dim
        self.classifiers = PartClassBlocks(gh, embed_dim, check_int(bottleneck_dim, "bottleneck_dim", 1),
                                           num_classes, dropout=check_float(dropout, "dropout", 0.0, 1.0),
                                           cosine=metric_loss, scale=check_float(am_scale, "am_scale"))
        self.triplet = TripletLoss(margin=triplet_margin, backend=backend) if metric_loss else None

    @classmethod
    def improved(cls, num_classes: int, **kwargs) -> "LATransformer":
        """The note's improved model: y-pooling, AM-Softmax + triplet loss, flip test."""
        kwargs = {"y_pooling": True, "metric_loss": True, "flip_test": True, **kwargs}
        return cls(num_classes, **kwargs)

    # ---- forward --------------------------------------------------------------------------
    def forward_backbone(self, x: torch.Tensor) -> Tuple[torch.Tensor]:
        """ViT → ``(tokens [B, 1 + P·W, embed_dim],)`` after the final norm."""
        if isinstance(x, torch.Tensor) and x.dim() == 4 and tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(f"x: the position embedding is built for img_size {self.img_size}, got images "
                             f"of {tuple(x.shape[-2:])} (resize them, or build the model with that img_size)")
        return (self.backbone(x).tokens,)

    def pooled_parts(self, tokens: torch.Tensor, gelt: bool = False) -> torch.Tensor:
        """The P part vectors [B, P, D] from the tokens [B, 1 + gh·gw, D] (CLS first, patches
        row-major): row means of the patch grid (x-pooling, official), or with ``y_pooling`` the
        average of row i's and column i's means (the note's Eq. 2); with ``gelt`` the globally
        enhanced local tokens ``(cls + λ·p_i) / (1 + λ)``.

        One pass over the tokens, and one writing their gradient (reidkern.nn.part_ops)."""
        cls_weight, part_weight = (1.0 / (1.0 + self.lmbd), self.lmbd / (1.0 + self.lmbd)) if gelt else (0.0, 1.0)
        return grid_part_pool(tokens, self.grid, self.y_pooling, cls_weight, part_weight)

    def test_features(self, parts: torch.Tensor) -> torch.Tensor:
        """Each part L2-normalised and scaled by 1/√P, concatenated: [B, P·D] (unit norm overall)."""
        return (F.normalize(parts, dim=-1) / math.sqrt(self.num_parts)).flatten(1)

    def forward_head(self, tokens: torch.Tensor):
        if not self.training:
            return self.test_features(self.pooled_parts(tokens, gelt=self.test_gelt))
        gelt = self.pooled_parts(tokens, gelt=True)
        logits, _ = self.classifiers(gelt)
        return {"logits": logits, "gelt": gelt}

    def forward(self, x: torch.Tensor):
        return self.forward_head(*self.forward_backbone(x))

    @torch.no_grad()
    def extract(self, x: torch.Tensor, flip: Optional[bool] = None) -> torch.Tensor:
        """Test features [B, P·D] in eval mode (mode restored); ``flip`` (default ``flip_test``)
        averages them with those of the mirrored image (the note's retrieval pipeline)."""
        flip = self.flip_test if flip is None else flip
        return eval_features(self, x, flip)

    # ---- loss -----------------------------------------------------------------------------
    def loss(self, outputs: Dict[str, torch.Tensor], pids: torch.Tensor):
        """Official: the sum over the P parts of each part's mean cross-entropy (label-smoothed by
        ``label_smoothing``, official 0). With
        ``metric_loss``: the same sum over AM-Softmax logits ``s·(cos − m·[c = pid])``, plus a
        batch-hard triplet loss on the concatenated GELTs. Returns ``(loss, logs)``.
        Raises ValueError/TypeError for pids that are not integer labels [B]."""
        logits = outputs["logits"]
        B, P, C = logits.shape
        pids = check_pids(pids, B, logits.device)
        target = pids.repeat_interleave(P)  # row b·P + p of the flattened logits is (sample b, part p)
        flat = logits.reshape(B * P, C)
        if self.metric_loss:
            flat = flat - (self.classifiers.scale * self.am_margin) * F.one_hot(target, C).to(flat.dtype)
        ce = F.cross_entropy(flat, target, label_smoothing=self.label_smoothing) * P  # = Σ_p mean_b CE(part p)
        logs = {"loss_ce": ce.detach()}
        if self.triplet is None:
            return ce, logs
        tri = self.triplet(outputs["gelt"].flatten(1), pids)
        logs["loss_triplet"] = tri.detach()
        return ce + tri, logs

    # ---- weights --------------------------------------------------------------------------
    def load_weights(self, weights: WeightsLike, strict: bool = True) -> LoadResult:
        """Load, by what the checkpoint holds:

        * this class's state_dict (``backbone.*``, ``classifiers.*``);
        * an official LA-Transformer checkpoint (``model.*`` = the timm ViT, ``classifier{i}.*`` =
          the ClassBlocks; its unused ``model.head`` and the duplicate ``cls_token``/``pos_embed``
          are ignored) — the 14 ClassBlocks are stacked into :class:`PartClassBlocks`;
        * a timm/DeiT ViT checkpoint (``patch_embed.*``, ``blocks.*``): the backbone only, the
          position embedding resized to this grid.

        A checkpoint trained on another number of identities (e.g. the official Market-1501 one,
        751) loads everything but the ClassBlocks' last Linear (``classifiers.fc2_*``), which keeps
        its fresh initialisation; a ``UserWarning`` and ``LoadResult.skipped_keys`` name the
        skipped keys.

        Raises ValueError naming ``weights`` for a checkpoint of another model (e.g. a DPTI or
        ResNet one), and listing missing/unexpected/mismatched keys otherwise (e.g. another
        embed_dim, number of parts or bottleneck).
        """
        sd = as_state_dict(weights)
        if any(k.startswith("classifier0.") for k in sd) or any(k.startswith("model.blocks.") for k in sd):
            sd = self._from_official(sd)
            return load_weights(self, sd, strict=strict)
        if any(k.startswith("backbone.patch_embed.") for k in sd):
            return load_weights(self, sd, strict=strict)
        if "patch_embed.proj.weight" in sd:
            return self.backbone.load_weights(sd, strict=strict)
        raise not_this_model("LA-Transformer", sd, "'backbone.patch_embed.*' (reidkern), 'model.*' + "
                             "'classifier{i}.*' (official) or a timm ViT 'patch_embed.proj.weight'")

    def _from_official(self, sd: dict) -> dict:
        vit = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.") and not k.startswith("model.head.")}
        out = {f"backbone.{k}": v for k, v in self.backbone.adapt_state_dict(vit).items()}
        stacks: Dict[str, list] = {}
        for i in range(self.num_parts):
            for old, new in _OFFICIAL_BLOCK.items():
                key = f"classifier{i}.{old}"
                if key in sd:
                    stacks.setdefault(new, []).append(sd[key])
        for new, vals in stacks.items():
            if len(vals) == self.num_parts:
                out[f"classifiers.{new}"] = torch.stack(vals)
        return out


def official_parameter_count(num_classes: int = 751, num_parts: int = 14, embed_dim: int = 768, depth: int = 12,
                             patches: int = 196, patch_size: int = 16, bottleneck: int = 256,
                             mlp_ratio: int = 4, with_head: bool = True) -> int:
    """Parameters of the official ``LATransformer(timm.create_model('vit_base_patch16_224',
    num_classes=#ids), lmbd=8)``, counted from its structure (not by building it).

    ViT: patch conv (3·16²·D + D), cls (D), pos_embed ((1 + 196)·D), per block 2 LayerNorms (4D),
    qkv (3D² + 3D), proj (D² + D), MLP (2·4D² + 4D + D), final norm (2D); ``with_head``: timm's
    Linear(D, #ids) head, which the official forward never calls. Per ClassBlock: Linear(D, 256),
    BN(256) (2·256), Linear(256, #ids). At 751 ids: 91,841,537 with the head (the figure the official
    training notebook prints as trainable once all blocks are unfrozen), 91,264,018 without.
    """
    D = embed_dim
    vit = 3 * patch_size ** 2 * D + D + D + (1 + patches) * D
    vit += depth * (4 * D + 3 * D * D + 3 * D + D * D + D + 2 * mlp_ratio * D * D + mlp_ratio * D + D)
    vit += 2 * D
    head = D * num_classes + num_classes if with_head else 0
    block = D * bottleneck + bottleneck + 2 * bottleneck + bottleneck * num_classes + num_classes
    return vit + head + num_parts * block
