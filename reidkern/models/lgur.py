"""LGUR: Learning Granularity-Unified Representations for text-to-image person ReID.

Source: Shao et al., ACM MM 2022 (``../shared/papers/001_*``) and the official code
(ZhiyinShao-H/LGUR, ``model/DETR_model.py``: ``TextImgPersonReidNet_mydecoder_pixelVit_transTXT_3_bert``).

    V  = DeiT-S(image)[patch tokens]                       [B, 192, 384]
    T  = BiLSTM_avg(frozen BERT(caption))                  [B, L, 384]
    DGA (one MHA block, 400-atom dictionary D shared by the batch, foreground mask M = σ(Linear(V))):
        V_re = MHA(V, D, D) ⊙ M      T_re = MHA(T, D, D)
        V_g  = MHA(V, T, T) ⊙ M      (training only; caption padding masked; same weights)
    PGU (6 shared prototypes, 2 MHA blocks of 6 heads × 512, six bias-free 384→512 projections):
        F̃ = concat_k W_k(MHA₂(p_k, F, F)) for F ∈ {V_re, V_g, T_re, T}   → [B, 6, 512] each
    Loss (all weights 1): L_M = Σ_{F̃} L_ID(F̃) + L_RK(T̃_re, Ṽ_re) + L_RK(T̃, Ṽ_g);
        L_G = L_RK(T̃_re, T̃) + L_RK(Ṽ_re, Ṽ_g).
    Test: Ṽ_re and T̃_re only (the dictionary branch), cosine similarity of the 3072-d concatenation.

All attention goes through reidkern's layers: the dictionary stays one [400, 384] tensor for
the whole batch and the prototypes are broadcast, never copied per sample.
:mod:`reidkern.models.lgur_eager` is the same model from the field's standard blocks.
"""
from __future__ import annotations

import os
import warnings
from typing import Dict, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from reidkern.nn import CrossModalRankingLoss, DictionaryCrossAttention, PrototypeUnification

from .backbones.resnet import ResNet50
from .backbones.vit import VisionTransformer
from .text import FrozenTextEncoder, lgur_text_encoder

__all__ = ["LGUR", "LGUROutput", "LGURImageTokens"]


class LGUROutput(NamedTuple):
    """Part features of one training forward, each float [B, K, out_dim] (K = 6, out_dim = 512).

    image_dict: Ṽ_re (dictionary branch, used at test); text_dict: T̃_re (used at test);
    image_guided: Ṽ_g (text-guided branch; None in eval mode); text: T̃ (plain text tokens).
    """

    image_dict: torch.Tensor
    text_dict: torch.Tensor
    image_guided: Optional[torch.Tensor]
    text: torch.Tensor


class LGURImageTokens(nn.Module):
    """Image encoder → tokens [B, L, dim].

    ``"deit_small"`` (the paper's): reidkern's DeiT-Small ViT (timm names) at ``img_size``, patch
    16, stride 16, the first 11 of 12 blocks, no final norm, prefix tokens dropped → 24×8 = 192
    tokens of 384 at 384×128. As in the official code (TransReID's ``deit_small_patch16_224`` with
    ``local_feature=True``) the sequence has one class token; a distilled DeiT checkpoint's
    distillation token is dropped on load (``load_weights``). ``distilled=True`` keeps it instead
    (``deit_small_distilled_patch16``'s structure: +768 parameters, one more token in each block).

    ``"resnet50"``: torchvision-named ResNet-50 (last stride 1) → [B, 2048, 24, 8] at 384×128, a
    bias-free 1×1 convolution to ``dim`` (our choice: the notes give no detail of the official
    ResNet variant's projection), flattened row-major.
    """

    def __init__(self, kind: str = "deit_small", img_size=(384, 128), dim: int = 384, distilled: bool = False,
                 drop_path_rate: float = 0.1):
        super().__init__()
        self.kind = kind
        if kind == "deit_small":
            if dim != 384:
                raise ValueError(f"dim: DeiT-Small gives 384-d tokens, got dim={dim}")
            self.body = VisionTransformer(img_size=img_size, patch_size=16, stride_size=16, embed_dim=384, depth=11,
                                          num_heads=6, distilled=distilled, final_norm=False,
                                          drop_path_rate=drop_path_rate, total_depth=12)
            self.proj = None
        elif kind == "resnet50":
            self.body = ResNet50(last_stride=1)
            self.proj = nn.Conv2d(2048, dim, 1, bias=False)
        else:
            raise ValueError(f"image_backbone: expected 'deit_small', 'resnet50' or an nn.Module, got {kind!r}")

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if self.kind == "deit_small":
            return self.body(img).patch_tokens
        fmap = self.proj(self.body(img)["layer4"])
        return fmap.flatten(2).transpose(1, 2)

    def load_weights(self, weights, strict: bool = True):
        """Load ImageNet weights into the backbone: a timm/DeiT file or state_dict for
        ``deit_small`` (a distilled checkpoint's ``dist_token`` and its position-embedding row are
        dropped when the model has no distillation token, as TransReID's loader does; the grid is
        resized bilinearly, as TransReID does), a torchvision ResNet-50 file for ``resnet50``."""
        if self.kind == "resnet50":
            return self.body.load_weights(weights, strict=strict)
        from .weights import as_state_dict

        sd = dict(as_state_dict(weights))
        if self.body.dist_token is None and "dist_token" in sd:
            sd.pop("dist_token")
            pe = sd.get("pos_embed")
            if pe is not None and pe.dim() == 3:
                sd["pos_embed"] = torch.cat([pe[:, :1], pe[:, 2:]], dim=1)
        return self.body.load_weights(sd, strict=strict, interpolation="bilinear")


def _as_text_encoder(text_encoder, dim: int, max_length: int) -> FrozenTextEncoder:
    if isinstance(text_encoder, FrozenTextEncoder):
        return text_encoder
    if isinstance(text_encoder, (str, os.PathLike)):
        return lgur_text_encoder(text_encoder, hidden_size=dim, max_length=max_length)
    raise TypeError("text_encoder: expected a local encoder folder (str / PathLike) or a FrozenTextEncoder, "
                    f"got {type(text_encoder).__name__}")


class LGUR(nn.Module):
    """LGUR (DGA + PGU) over a DeiT-Small image encoder and a frozen BERT-style text encoder.

    Args:
        num_classes: training identities (one ``Linear(out_dim, num_classes)`` classifier per
            prototype, shared by image and text; 0 builds none, e.g. to count or to test only).
        text_encoder: a local folder with a Hugging Face BERT-style model (BERT-base in the paper;
            never downloads) or a :class:`reidkern.models.text.FrozenTextEncoder`.
        image_backbone: ``"deit_small"`` (paper), ``"resnet50"`` or an ``nn.Module`` mapping
            [B, 3, H, W] to tokens [B, L, dim]. img_size: (H, W), (384, 128).
        distilled, drop_path_rate: DeiT options (see :class:`LGURImageTokens`; official 0.1).
        dim (384), num_atoms (400), dga_heads × dga_head_dim (6 × 64), dga_ffn_dim (768): DGA.
        num_prototypes (6), pgu_layers (2), pgu_heads × pgu_head_dim (6 × 512), pgu_ffn_dim
            (512), out_dim (512): PGU.
        max_length: caption token limit (100; a given FrozenTextEncoder's own ``max_length``; never
            more than the encoder's position limit); longer captions are truncated with a warning.
        margin: ranking-loss margin α (0.3). dropout: in the MHA blocks (0). backend: reidkern
            attention backend (None: default).

    Shapes: img float [B, 3, H, W]; text_ids / text_mask int [B, L] (mask 1 = token, right
    padding); encoder_tokens (optional, the frozen encoder's output) float [B, L, E].

    Raises:
        FileNotFoundError: missing encoder folder. TypeError / ValueError: bad arguments, a
        tokenizer whose vocabulary exceeds the encoder's, and at call time ids outside the
        encoder's vocabulary, empty captions, or image and text batches of different sizes.
    """

    # Skipped when a checkpoint was trained on another number of identities
    # (reidkern.models.weights.load_weights).
    id_classifier_prefixes = ("classifiers.",)

    def __init__(self, num_classes: int, text_encoder, image_backbone: Union[str, nn.Module] = "deit_small",
                 img_size=(384, 128), distilled: bool = False, drop_path_rate: float = 0.1, dim: int = 384,
                 num_atoms: int = 400, dga_heads: int = 6, dga_head_dim: int = 64, dga_ffn_dim: int = 768,
                 num_prototypes: int = 6, pgu_layers: int = 2, pgu_heads: int = 6, pgu_head_dim: int = 512,
                 pgu_ffn_dim: int = 512, out_dim: int = 512, max_length: int = 100, margin: float = 0.3,
                 dropout: float = 0.0, backend: Optional[str] = None):
        super().__init__()
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
            raise ValueError(f"num_classes: expected an int ≥ 0, got {num_classes!r}")
        if isinstance(image_backbone, nn.Module):
            self.image_encoder = image_backbone
        else:
            self.image_encoder = LGURImageTokens(image_backbone, img_size, dim, distilled, drop_path_rate)
        self.text_encoder = _as_text_encoder(text_encoder, dim, max_length)
        if self.text_encoder.rnn.hidden_size != dim:
            raise ValueError(f"text_encoder: its BiLSTM gives {self.text_encoder.rnn.hidden_size}-d tokens, "
                             f"expected dim={dim}")
        cfg = self.text_encoder.encoder.config
        self.vocab_size = int(cfg.vocab_size)
        tok = self.text_encoder.tokenizer
        if tok is not None and len(tok) > self.vocab_size:
            raise ValueError(f"text_encoder: the tokenizer has {len(tok)} tokens but the encoder's vocabulary has "
                             f"{self.vocab_size} (tokenizer and encoder do not match)")
        # the encoder's own position limit caps the caption length too
        limit = self.text_encoder.max_length if isinstance(text_encoder, FrozenTextEncoder) else max_length
        self.max_length = int(min(limit, getattr(cfg, "max_position_embeddings", limit)))
        self.dga = DictionaryCrossAttention(dim, num_atoms, dga_heads, dga_head_dim, dga_ffn_dim, dropout, backend)
        self.pgu = PrototypeUnification(dim, num_prototypes, pgu_layers, pgu_heads, pgu_head_dim, pgu_ffn_dim,
                                        out_dim, dropout, backend)
        for proj in self.pgu.projections:  # official: 1x1 conv, kaiming_normal_(fan_out, relu)
            nn.init.kaiming_normal_(proj.weight, mode="fan_out", nonlinearity="relu")
        self.num_classes, self.num_prototypes, self.out_dim = num_classes, num_prototypes, out_dim
        self.classifiers = nn.ModuleList(nn.Linear(out_dim, num_classes) for _ in range(num_prototypes if num_classes else 0))
        for c in self.classifiers:  # official Id_Loss: normal(std 0.001), zero bias
            nn.init.normal_(c.weight, std=0.001)
            nn.init.zeros_(c.bias)
        self.ranking = CrossModalRankingLoss(margin=margin, reduction="sum")

    # ---- weights ---------------------------------------------------------------------------
    def load_weights(self, weights, strict: bool = True):
        """Load, by what the checkpoint holds (a local file, a reidkern training checkpoint or a
        state_dict):

        * this class's state_dict (``dga.*``, ``pgu.*``, ...): the whole model; trained on another
          number of identities, the prototype classifiers (``classifiers.*``) are skipped with a
          ``UserWarning`` and keep their fresh initialisation (``reidkern.models.weights``);
        * anything else: ImageNet weights of the image backbone
          (:meth:`LGURImageTokens.load_weights`: timm/DeiT or torchvision ResNet-50).

        Returns the ``LoadResult``. Raises ValueError naming ``weights`` for a mismatch other than
        the classifiers' size (e.g. another text encoder, dim or number of prototypes);
        TypeError when the image backbone is a custom module and the checkpoint is not an LGUR one.
        """
        from .weights import as_state_dict, load_weights

        sd = as_state_dict(weights)
        if any(k.startswith(("dga.", "pgu.")) for k in sd):
            return load_weights(self, sd, strict=strict)
        if not isinstance(self.image_encoder, LGURImageTokens):
            raise TypeError("weights: not an LGUR checkpoint, and the image backbone is a custom module "
                            "(load its weights into model.image_encoder yourself)")
        return self.image_encoder.load_weights(sd, strict=strict)

    # ---- inputs ----------------------------------------------------------------------------
    def tokenize(self, captions: Sequence[str]) -> Dict[str, torch.Tensor]:
        """B captions → ``{"input_ids", "attention_mask"}`` int64 [B, L], L ≤ ``max_length``.

        Raises TypeError (not a list of strings), ValueError (no captions, an empty caption).
        Warns (UserWarning naming the limit) when captions are truncated."""
        if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
            raise TypeError("captions: expected a list of strings")
        captions = list(captions)
        if not captions:
            raise ValueError("captions: expected at least one caption")
        for i, c in enumerate(captions):
            if not c.strip():
                raise ValueError(f"captions[{i}]: empty caption")
        tok = self.text_encoder.tokenizer
        if tok is None:
            raise ValueError("text_encoder: has no tokenizer; pass text_ids / text_mask")
        lengths = [len(ids) for ids in tok(captions, truncation=False)["input_ids"]]
        longest = max(lengths)
        if longest > self.max_length:
            n = sum(length > self.max_length for length in lengths)
            warnings.warn(f"captions: {n} caption(s) of up to {longest} tokens truncated to the text encoder's "
                          f"limit of {self.max_length} tokens", UserWarning, stacklevel=2)
        enc = tok(captions, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def _check_text(self, text_ids, text_mask, encoder_tokens):
        if text_mask is None or not torch.is_tensor(text_mask) or text_mask.dim() != 2:
            raise ValueError("text_mask: expected an int tensor [B, L] (1 = token, 0 = padding)")
        if encoder_tokens is None:
            if not torch.is_tensor(text_ids) or text_ids.dim() != 2 or text_ids.is_floating_point():
                raise ValueError("text_ids: expected an int tensor [B, L]")
            if text_ids.shape != text_mask.shape:
                raise ValueError(f"text_ids {tuple(text_ids.shape)} and text_mask {tuple(text_mask.shape)} differ")
            if text_ids.numel() and (int(text_ids.min()) < 0 or int(text_ids.max()) >= self.vocab_size):
                raise ValueError(f"text_ids: ids must lie in [0, {self.vocab_size}) (the encoder's vocabulary), got "
                                 f"[{int(text_ids.min())}, {int(text_ids.max())}]: tokenizer and encoder do not match")
        elif encoder_tokens.dim() != 3 or encoder_tokens.shape[:2] != text_mask.shape:
            raise ValueError(f"encoder_tokens: expected [B, L, E] matching text_mask {tuple(text_mask.shape)}, "
                             f"got {tuple(encoder_tokens.shape)}")
        lengths = text_mask.to(torch.long).sum(1)
        if bool((lengths == 0).any()):
            raise ValueError(f"text_mask: caption {int((lengths == 0).nonzero()[0])} is empty (no tokens)")
        if text_mask.shape[1] > self.max_length:
            warnings.warn(f"text_ids: captions of {text_mask.shape[1]} tokens truncated to the text encoder's limit "
                          f"of {self.max_length} tokens", UserWarning, stacklevel=3)
            text_mask = text_mask[:, :self.max_length]
            text_ids = None if text_ids is None else text_ids[:, :self.max_length]
            encoder_tokens = None if encoder_tokens is None else encoder_tokens[:, :self.max_length]
        longest = int(lengths.max())
        if longest < text_mask.shape[1]:  # columns of padding only (fixed-length tokenisation): drop them
            text_mask = text_mask[:, :longest]
            text_ids = None if text_ids is None else text_ids[:, :longest]
            encoder_tokens = None if encoder_tokens is None else encoder_tokens[:, :longest]
        return text_ids, text_mask, encoder_tokens

    # ---- encoders --------------------------------------------------------------------------
    def encode_image(self, img: torch.Tensor) -> torch.Tensor:
        """img float [B, 3, H, W] → V [B, L, dim]."""
        return self.image_encoder(img)

    def frozen_text(self, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """The frozen encoder's output [B, L, E] (no gradient)."""
        enc = self.text_encoder.encoder
        with torch.no_grad():
            return enc(input_ids=text_ids.to(self.text_encoder.rnn.lstm.weight_ih_l0.device),
                       attention_mask=text_mask.to(self.text_encoder.rnn.lstm.weight_ih_l0.device)).last_hidden_state

    def encode_text(self, text_ids, text_mask, encoder_tokens=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """→ (T [B, L, dim] BiLSTM tokens, 0 at padding; padding mask bool [B, L], True = padding).
        ``encoder_tokens`` skips the frozen encoder (precomputed features)."""
        text_ids, text_mask, encoder_tokens = self._check_text(text_ids, text_mask, encoder_tokens)
        if encoder_tokens is None:
            encoder_tokens = self.frozen_text(text_ids, text_mask)
        mask = text_mask.to(encoder_tokens.device)
        return self.text_encoder.rnn(encoder_tokens, mask), mask == 0

    # ---- DGA + PGU -------------------------------------------------------------------------
    def reconstruct(self, tokens, foreground=False, context=None, context_padding_mask=None):
        """DGA block: ``MHA(tokens, D, D)`` (``context`` None) or ``MHA(tokens, context, context)``,
        times the foreground mask when ``foreground``. [B, L, dim] → [B, L, dim]."""
        return self.dga(tokens, foreground=foreground, context=context, context_padding_mask=context_padding_mask)

    def unify(self, tokens, key_padding_mask=None):
        """PGU: [B, L, dim] (+ padding mask [B, L]) → [B, K, out_dim]."""
        return self.pgu(tokens, key_padding_mask)

    def granularity_unify(self, v, t, t_pad, guided: bool = True) -> LGUROutput:
        """DGA + PGU on encoder tokens V [B, Lv, dim], T [B, Lt, dim] (t_pad: True = padding)."""
        v_re = self.reconstruct(v, foreground=True)
        t_re = self.reconstruct(t)
        v_g = self.reconstruct(v, foreground=True, context=t, context_padding_mask=t_pad) if guided else None
        return LGUROutput(self.unify(v_re), self.unify(t_re, t_pad), None if v_g is None else self.unify(v_g),
                          self.unify(t, t_pad))

    def forward(self, img, text_ids=None, text_mask=None, encoder_tokens=None) -> LGUROutput:
        """Paired images and captions → :class:`LGUROutput`; the text-guided branch Ṽ_g is
        computed in training mode only. Raises ValueError when the batches differ in size."""
        if not torch.is_tensor(img) or img.dim() != 4:
            raise ValueError(f"img: expected a float tensor [B, 3, H, W], got {getattr(img, 'shape', type(img))}")
        b_txt = (encoder_tokens if encoder_tokens is not None else text_mask if text_mask is not None else text_ids)
        if b_txt is None:
            raise ValueError("text_ids / text_mask: LGUR's forward needs the paired captions")
        if b_txt.shape[0] != img.shape[0]:
            raise ValueError(f"img and text_ids: image batch {img.shape[0]} and text batch {b_txt.shape[0]} differ "
                             "(LGUR needs matched image–caption pairs)")
        t, t_pad = self.encode_text(text_ids, text_mask, encoder_tokens)
        v = self.encode_image(img)
        return self.granularity_unify(v, t, t_pad, guided=self.training)

    # ---- test-time features ----------------------------------------------------------------
    def extract_image(self, img: torch.Tensor) -> torch.Tensor:
        """Test-time image features: Ṽ_re flattened, float [B, K·out_dim] (compare by cosine)."""
        return self.unify(self.reconstruct(self.encode_image(img), foreground=True)).flatten(1)

    def extract_text(self, text_ids, text_mask, encoder_tokens=None) -> torch.Tensor:
        """Test-time caption features: T̃_re flattened, float [B, K·out_dim] (compare by cosine)."""
        t, t_pad = self.encode_text(text_ids, text_mask, encoder_tokens)
        return self.unify(self.reconstruct(t), t_pad).flatten(1)

    # ---- loss ------------------------------------------------------------------------------
    def id_loss(self, image_parts, text_parts, pids):
        """Official ``Id_Loss`` per prototype k: CE(W_k Ĩ_k) + CE(W_k T̃_k), averaged over k."""
        if not len(self.classifiers):
            raise ValueError("num_classes: the model was built without classifiers (num_classes=0)")
        terms = [F.cross_entropy(w(image_parts[:, k]), pids) + F.cross_entropy(w(text_parts[:, k]), pids)
                 for k, w in enumerate(self.classifiers)]
        return torch.stack(terms).mean()

    def loss(self, out: LGUROutput, pids: torch.Tensor, generator: Optional[torch.Generator] = None):
        """``L = L_M + L_G`` (paper Eq. for L_M and L_G, all weights 1; official training script).

        Ranking pairs (bidirectional, cosine of the concatenated parts, margin α, one random
        semi-hard negative per anchor, same-identity candidates never negatives):
        (Ṽ_re, T̃_re), (Ṽ_g, T̃) [L_M] and (T̃, T̃_re), (Ṽ_g, Ṽ_re) [L_G]. ID: the four outputs.
        pids int64 [B]. Returns (loss, logs: dict of floats)."""
        if out.image_guided is None:
            raise ValueError("out: the text-guided branch is missing (run the forward in training mode)")
        pids = pids.to(out.image_dict.device)
        flat = [x.flatten(1) for x in out]
        v_re, t_re, v_g, t = flat
        id_dict = self.id_loss(out.image_dict, out.text_dict, pids)
        id_guided = self.id_loss(out.image_guided, out.text, pids)
        rk_dict = self.ranking(v_re, t_re, pids, generator)
        rk_guided = self.ranking(v_g, t, pids, generator)
        rk_text = self.ranking(t, t_re, pids, generator)
        rk_image = self.ranking(v_g, v_re, pids, generator)
        total = id_dict + id_guided + rk_dict + rk_guided + rk_text + rk_image
        logs = {"id": float((id_dict + id_guided).detach()), "rank_m": float((rk_dict + rk_guided).detach()),
                "rank_g": float((rk_text + rk_image).detach())}
        return total, logs

    # ---- optimiser groups ------------------------------------------------------------------
    def param_groups(self, lr_transformer: float = 1e-4, lr_other: float = 1e-3):
        """Official Adam groups: ``lr_transformer`` for the DGA/PGU blocks, the dictionary, the
        prototypes and the foreground mask (the official "DETR" group); ``lr_other`` for the
        image encoder ×0.1 (the official ``opt.lr * 0.1`` = 1e-4), the BiLSTM, the six
        projections and the classifiers. The frozen encoder is left out."""
        other_ids = {id(p) for p in self.pgu.projections.parameters()} | {id(p) for p in self.classifiers.parameters()}
        head = [p for p in list(self.dga.parameters()) + list(self.pgu.parameters())
                if id(p) not in other_ids and p.requires_grad]
        groups = [
            {"params": head, "lr": lr_transformer},
            {"params": [p for p in self.image_encoder.parameters() if p.requires_grad], "lr": lr_other * 0.1},
            {"params": list(self.text_encoder.rnn.parameters()), "lr": lr_other},
            {"params": list(self.pgu.projections.parameters()) + list(self.classifiers.parameters()), "lr": lr_other},
        ]
        return [g for g in groups if g["params"]]
