"""Vision Transformers with timm's parameter names: ViT-B/16 and DeiT-Small distilled.

Sources: Dosovitskiy et al., "An Image is Worth 16x16 Words" (ICLR 2021); Touvron et al.,
"Training data-efficient image transformers & distillation through attention" (ICML 2021,
the distillation token); He et al., "TransReID" (ICCV 2021) for overlapping patches
(``stride_size`` < 16) and interpolated position embeddings at ReID image sizes.

Parameter names equal timm's ``VisionTransformer``: ``patch_embed.proj``, ``cls_token``,
``dist_token`` (distilled), ``pos_embed``, ``blocks.N.norm1``, ``blocks.N.attn.qkv``,
``blocks.N.attn.proj``, ``blocks.N.norm2``, ``blocks.N.mlp.fc1``, ``blocks.N.mlp.fc2``,
``norm`` (and ``head``/``head_dist``, which a backbone does not build and the loader
ignores). LayerNorm eps is 1e-6 and GELU is exact, as in timm and DeiT.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..weights import LoadResult, WeightsLike, as_state_dict, load_weights
from .resnet import _check_image

__all__ = [
    "VisionTransformer",
    "ViTOutput",
    "resize_pos_embed",
    "vit_base_patch16",
    "deit_small_distilled_patch16",
]

SizeLike = Union[int, Tuple[int, int]]


class ViTOutput(NamedTuple):
    """Output of ``VisionTransformer.forward``.

    tokens: [B, P + L, D] the whole sequence after the last block (and the final norm unless
        skipped); P = 1 (class token) or 2 (class + distillation token), L = grid_h·grid_w.
    cls_token: [B, D] ``tokens[:, 0]``.
    dist_token: [B, D] ``tokens[:, 1]`` for distilled models, else None.
    patch_tokens: [B, L, D] ``tokens[:, P:]``, row-major over the (grid_h, grid_w) grid.
    """

    tokens: torch.Tensor
    cls_token: torch.Tensor
    dist_token: Optional[torch.Tensor]
    patch_tokens: torch.Tensor


def _pair(v: SizeLike, name: str) -> Tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v, v)
    if (
        not isinstance(v, (tuple, list))
        or len(v) != 2
        or not all(isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in v)
    ):
        raise ValueError(f"{name}: expected a positive int or (height, width), got {v!r}")
    return int(v[0]), int(v[1])


def resize_pos_embed(
    pos_embed: torch.Tensor,
    num_prefix_tokens: int,
    old_grid: Tuple[int, int],
    new_grid: Tuple[int, int],
    mode: str = "bicubic",
) -> torch.Tensor:
    """Resize a position embedding to a new patch grid; prefix tokens are kept as they are.

    Args:
        pos_embed: [1, P + old_h·old_w, D].
        num_prefix_tokens: P (1 for ViT, 2 for distilled DeiT).
        old_grid, new_grid: (h, w) patch grids.
        mode: ``F.interpolate`` mode on the [D, h, w] grid, ``"bicubic"`` (timm's default) or
            ``"bilinear"`` (TransReID's); ``align_corners=False``.

    Returns:
        [1, P + new_h·new_w, D], same dtype (computed in float32 at least).

    Raises:
        ValueError: if the token count does not equal P + old_h·old_w.
    """
    if pos_embed.dim() != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"pos_embed: expected shape [1, N, D], got {list(pos_embed.shape)}")
    oh, ow = _pair(tuple(old_grid), "old_grid")
    nh, nw = _pair(tuple(new_grid), "new_grid")
    if pos_embed.shape[1] != num_prefix_tokens + oh * ow:
        raise ValueError(
            f"pos_embed: has {pos_embed.shape[1]} tokens, expected {num_prefix_tokens} prefix + "
            f"{oh}x{ow} grid = {num_prefix_tokens + oh * ow}"
        )
    if (oh, ow) == (nh, nw):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dtype = grid.dtype
    g = grid.reshape(1, oh, ow, -1).permute(0, 3, 1, 2)
    g = g.float() if dtype in (torch.float16, torch.bfloat16) else g
    g = F.interpolate(g, size=(nh, nw), mode=mode, align_corners=False)
    g = g.permute(0, 2, 3, 1).reshape(1, nh * nw, -1).to(dtype)
    return torch.cat([prefix, g], dim=1)


class PatchEmbed(nn.Module):
    """Conv patch embedding: ``proj`` = Conv2d(3, D, patch, stride); stride < patch overlaps."""

    def __init__(self, img_size: Tuple[int, int], patch_size: int, stride: int, embed_dim: int):
        super().__init__()
        self.img_size = img_size
        self.grid_size = ((img_size[0] - patch_size) // stride + 1, (img_size[1] - patch_size) // stride + 1)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(3, embed_dim, patch_size, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(
                f"x: expected images of size {self.img_size[0]}x{self.img_size[1]} (img_size), "
                f"got {x.shape[-2]}x{x.shape[-1]}"
            )
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` Linear and an output ``proj``."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth per sample (Huang et al. 2016); identity at eval or p = 0."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)); x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop: float, attn_drop: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """ViT / DeiT backbone returning tokens, with timm parameter names.

    Args:
        img_size: input (H, W) or one int; e.g. (256, 128) for ReID, (384, 128) for LGUR.
        patch_size: patch side in pixels (16).
        stride_size: patch stride; < patch_size gives overlapping patches (TransReID uses 12).
            Grid = ((H − patch)//stride + 1, (W − patch)//stride + 1).
        embed_dim, num_heads, mlp_ratio: width (768/12/4 for ViT-B, 384/6/4 for DeiT-S).
        depth: number of blocks built and run (≤ 12); LGUR runs 11.
        final_norm: apply the final LayerNorm ``norm`` (LGUR: False).
        distilled: add DeiT's distillation token (2 prefix tokens instead of 1).
        drop_rate, attn_drop_rate, drop_path_rate: dropout, attention dropout and stochastic
            depth (linearly increasing over blocks); all 0 by default.
        total_depth: depth of the architecture the checkpoints come from (12); blocks at or
            beyond ``depth`` and, without ``final_norm``, ``norm.*`` are ignored on load.

    Forward:
        x: float [B, 3, H, W] with (H, W) == img_size. Returns ``ViTOutput``.

    Raises:
        ValueError: bad sizes (img_size smaller than a patch, stride out of range, depth out of
        range) or a wrongly sized input.
    """

    def __init__(
        self,
        img_size: SizeLike = 224,
        patch_size: int = 16,
        stride_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        distilled: bool = False,
        final_norm: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        total_depth: int = 12,
    ):
        super().__init__()
        img = _pair(img_size, "img_size")
        if not isinstance(stride_size, int) or not 1 <= stride_size <= patch_size:
            raise ValueError(f"stride_size: expected an int in [1, {patch_size}], got {stride_size!r}")
        if min(img) < patch_size:
            raise ValueError(f"img_size: {img} is smaller than one {patch_size}x{patch_size} patch")
        if not isinstance(depth, int) or not 1 <= depth <= total_depth:
            raise ValueError(f"depth: expected an int in [1, {total_depth}], got {depth!r}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.embed_dim = embed_dim
        self.depth = depth
        self.total_depth = total_depth
        self.final_norm = final_norm
        self.num_prefix_tokens = 2 if distilled else 1
        self.patch_embed = PatchEmbed(img, patch_size, stride_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if distilled else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + self.patch_embed.num_patches, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = [drop_path_rate * i / max(total_depth - 1, 1) for i in range(total_depth)]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, drop_rate, attn_drop_rate, dpr[i]) for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6) if final_norm else nn.Identity()
        self._init_weights()

    @property
    def grid_size(self) -> Tuple[int, int]:
        return self.patch_embed.grid_size

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.dist_token is not None:
            nn.init.trunc_normal_(self.dist_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> ViTOutput:
        _check_image(x)
        t = self.patch_embed(x)
        prefix = [self.cls_token.expand(t.shape[0], -1, -1)]
        if self.dist_token is not None:
            prefix.append(self.dist_token.expand(t.shape[0], -1, -1))
        t = self.pos_drop(torch.cat(prefix + [t], dim=1) + self.pos_embed)
        for blk in self.blocks:
            t = blk(t)
        t = self.norm(t)
        p = self.num_prefix_tokens
        return ViTOutput(t, t[:, 0], t[:, 1] if p == 2 else None, t[:, p:])

    # ---- weights -------------------------------------------------------------------------
    def _ignored_prefixes(self) -> Tuple[str, ...]:
        ign = ["head.", "head_dist.", "fc_norm.", "pre_logits."]
        ign += [f"blocks.{i}." for i in range(self.depth, self.total_depth)]
        if not self.final_norm:
            ign.append("norm.")
        return tuple(ign)

    def adapt_state_dict(self, state_dict: dict, checkpoint_grid: Optional[Tuple[int, int]] = None, mode: str = "bicubic") -> dict:
        """Resize ``pos_embed`` of a timm/DeiT/TransReID checkpoint to this model's grid.

        ``checkpoint_grid`` is the checkpoint's (h, w) patch grid; by default it is inferred
        as square (e.g. 14×14 for 224×224 ImageNet checkpoints). Raises ValueError when the
        grid cannot be inferred (non-square count) or the prefix tokens differ.
        """
        sd = dict(state_dict)
        pe = sd.get("pos_embed")
        if pe is None or tuple(pe.shape) == tuple(self.pos_embed.shape):
            return sd
        p = self.num_prefix_tokens
        if pe.dim() != 3 or pe.shape[-1] != self.embed_dim:
            return sd  # reported as a shape mismatch by the loader
        n = pe.shape[1] - p
        if checkpoint_grid is None:
            side = math.isqrt(max(n, 0))
            if n <= 0 or side * side != n:
                raise ValueError(
                    f"pos_embed: checkpoint has {pe.shape[1]} tokens ({p} prefix + {n}); {n} is not a "
                    "square grid: pass checkpoint_grid=(h, w) (or the prefix-token count differs: "
                    f"this model has {p})"
                )
            checkpoint_grid = (side, side)
        sd["pos_embed"] = resize_pos_embed(pe, p, checkpoint_grid, self.grid_size, mode=mode)
        return sd

    def load_weights(
        self,
        weights: WeightsLike,
        strict: bool = True,
        checkpoint_grid: Optional[Tuple[int, int]] = None,
        interpolation: str = "bicubic",
    ) -> LoadResult:
        """Load a timm/DeiT-layout checkpoint (file or state_dict). ``pos_embed`` is resized
        when the grid differs (prefix tokens kept); ``head*``, blocks beyond ``depth`` and (with
        ``final_norm=False``) ``norm.*`` are ignored. Errors as
        ``reidkern.models.weights.load_weights``."""
        sd = self.adapt_state_dict(as_state_dict(weights), checkpoint_grid, interpolation)
        return load_weights(self, sd, strict=strict, ignore_prefixes=self._ignored_prefixes())


def _build(
    weights, strict, checkpoint_grid, interpolation, **kwargs
) -> VisionTransformer:
    model = VisionTransformer(**kwargs)
    if weights is not None:
        model.load_weights(weights, strict=strict, checkpoint_grid=checkpoint_grid, interpolation=interpolation)
    return model


def vit_base_patch16(
    img_size: SizeLike = (256, 128),
    stride_size: int = 16,
    weights: Optional[WeightsLike] = None,
    depth: int = 12,
    final_norm: bool = True,
    drop_path_rate: float = 0.0,
    strict: bool = True,
    checkpoint_grid: Optional[Tuple[int, int]] = None,
    interpolation: str = "bicubic",
) -> VisionTransformer:
    """ViT-B/16 (D = 768, 12 blocks, 12 heads), timm names (``vit_base_patch16_224``).

    ``weights``: None, a local file or a state_dict of timm's ``vit_base_patch16_224`` (or a
    TransReID/LA-Transformer checkpoint of it); the position embedding is interpolated to
    ``img_size``/``stride_size``. LA-Transformer: ``img_size=224``. Never downloads.
    Raises FileNotFoundError / ValueError (lists missing/unexpected keys) — see ``load_weights``.
    """
    return _build(
        weights, strict, checkpoint_grid, interpolation,
        img_size=img_size, stride_size=stride_size, embed_dim=768, depth=depth, num_heads=12,
        final_norm=final_norm, drop_path_rate=drop_path_rate,
    )


def deit_small_distilled_patch16(
    img_size: SizeLike = (384, 128),
    stride_size: int = 16,
    weights: Optional[WeightsLike] = None,
    depth: int = 12,
    final_norm: bool = True,
    drop_path_rate: float = 0.0,
    strict: bool = True,
    checkpoint_grid: Optional[Tuple[int, int]] = None,
    interpolation: str = "bicubic",
) -> VisionTransformer:
    """DeiT-Small distilled (D = 384, 12 blocks, 6 heads, class + distillation tokens), timm
    names (``deit_small_distilled_patch16_224``).

    LGUR: ``deit_small_distilled_patch16((384, 128), depth=11, final_norm=False)`` → 24×8 = 192
    patch tokens of dim 384 in ``ViTOutput.patch_tokens``. Never downloads. Raises
    FileNotFoundError / ValueError — see ``VisionTransformer.load_weights``.
    """
    return _build(
        weights, strict, checkpoint_grid, interpolation,
        img_size=img_size, stride_size=stride_size, embed_dim=384, depth=depth, num_heads=6,
        distilled=True, final_norm=final_norm, drop_path_rate=drop_path_rate,
    )
