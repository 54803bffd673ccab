"""LGUR (ACM MM 2022): DeiT-Small at 384×128 (192 image tokens), captions of 64 tokens, batch 64
pairs (32 ids × 2), 11,003 ids (CUHK-PEDES), the defaults of reidkern.models.LGUR (400 atoms, 6
prototypes, 6 heads × 512 in PGU).

The frozen text encoder is left out of the timing: the batch carries its output (BERT-base width,
768) as ``encoder_tokens``, and the model's encoder is a one-layer stand-in of that width that is
never run. "step" = DeiT + BiLSTM + DGA + PGU + loss; "head" = DGA + PGU + loss on fixed encoder
tokens. A second case, ``lgur_dga_pgu``, times DGA + PGU alone (the part reidkern's layers replace):
forward + backward of the four PGU outputs with a plain sum-of-squares, no ID/ranking loss.
"""
import os

import torch

from model_cases import ModelCase, pk_labels
from reidkern.models.lgur import LGUR
from reidkern.models.lgur_eager import LGUREager
from reidkern.models.text import FrozenTextEncoder

CAPTION_LEN = 64
ENCODER_WIDTH = 768  # BERT-base
# the paper's batch is 64; REIDKERN_BENCH_LGUR_BATCH runs another (e.g. the largest a small CPU
# finishes in reasonable time); the table's size column names the batch measured
BATCH = int(os.environ.get("REIDKERN_BENCH_LGUR_BATCH", "64"))


def _text_stand_in(width, dim):
    import transformers

    cfg = transformers.BertConfig(vocab_size=8, hidden_size=width, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=8, max_position_embeddings=128)
    return FrozenTextEncoder.from_modules(transformers.BertModel(cfg), None, hidden_size=dim)


def build(smoke):
    if smoke:
        from reidkern.models.backbones.vit import VisionTransformer

        model = LGUR(8, _text_stand_in(32, 16), image_backbone=_SmokeViT(VisionTransformer(
            img_size=(32, 16), embed_dim=16, depth=1, num_heads=2, final_norm=False)), dim=16, num_atoms=10,
            dga_heads=2, dga_head_dim=8, dga_ffn_dim=16, num_prototypes=3, pgu_heads=2, pgu_head_dim=16,
            pgu_ffn_dim=16, out_dim=8)
    else:
        model = LGUR(11003, _text_stand_in(ENCODER_WIDTH, 384))
    return model, LGUREager(model)


class _SmokeViT(torch.nn.Module):
    def __init__(self, vit):
        super().__init__()
        self.vit = vit

    def forward(self, img):
        return self.vit(img).patch_tokens


def make_batch(case, smoke, device="cpu"):
    b, (h, w) = case.shape(smoke)
    length, width = (6, 32) if smoke else (CAPTION_LEN, ENCODER_WIDTH)
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(length // 2, length + 1, (b,), generator=g)
    lengths[0] = length
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    return {"img": torch.randn(b, 3, h, w, generator=g).to(device),
            "pid": pk_labels(b, 2).to(device),
            "encoder_tokens": (torch.randn(b, length, width, generator=g) * mask[..., None]).to(device),
            "text_mask": mask.to(device), "t_pad": (mask == 0).to(device)}


def _lgur(impl):
    return impl.model if isinstance(impl, LGUREager) else impl


def backbone(impl, batch):
    m = _lgur(impl)
    t, _ = m.encode_text(None, batch["text_mask"], batch["encoder_tokens"])
    return m.encode_image(batch["img"]), t


def head_loss(impl, feats, batch):
    v, t = feats
    out = impl.granularity_unify(v, t, batch["t_pad"])
    # the same semi-hard negatives for both providers
    return impl.loss(out, batch["pid"], torch.Generator(device=v.device).manual_seed(0))[0]


def dga_pgu(impl, feats, batch):
    v, t = feats
    return sum(o.square().mean() for o in impl.granularity_unify(v, t, batch["t_pad"]))


CASES = [ModelCase("lgur", build, batch=BATCH, size=(384, 128), smoke_batch=4, smoke_size=(32, 16), num_instances=2,
                   make_batch=make_batch, backbone=backbone, head_loss=head_loss,
                   note="DeiT-S 192 tokens, captions 64, 400 atoms, 6x512 PGU, 11003 ids; frozen encoder excluded"),
         ModelCase("lgur_dga_pgu", build, batch=BATCH, size=(384, 128), smoke_batch=4, smoke_size=(32, 16),
                   num_instances=2, parts=("head",), make_batch=make_batch, backbone=backbone, head_loss=dga_pgu,
                   note="DGA + PGU only (4 outputs, sum of squares): the layers reidkern replaces")]
