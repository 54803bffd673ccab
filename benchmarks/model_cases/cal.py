"""CAL (ICCV 2023): two-stream ResNet-50 (AGW split, last stride 1) at 288×144 (18×9 = 162 tokens),
batch 64 = 8 identities × (4 visible + 4 infrared), 395 ids (SYSU-MM01), the defaults of
reidkern.models.CAL (N_p = 6, α = 0.5, pools 1/3/5, TSAA d = 256, hidden 512).

"step" = backbone + DRM + TSAA + losses; "head" = DRM + TSAA (self- and cross-refinement) + the
classifiers and losses on fixed layer4 maps — the part reidkern's layers replace. Partners (the
same-identity other-modality map each image's parts refine) are drawn once, the same for both
providers.
"""
import os

import torch

from model_cases import ModelCase
from reidkern.models.cal import CAL, sample_partners
from reidkern.models.cal_eager import CALEager

# the paper's batch is 64 (32 + 32); REIDKERN_BENCH_CAL_BATCH runs another (a multiple of 8)
BATCH = int(os.environ.get("REIDKERN_BENCH_CAL_BATCH", "64"))


def build(smoke):
    if smoke:
        model = CAL(8, num_parts=3, pool_sizes=(1, 3), score_channels=8, attn_dim=8, mlp_hidden=16)
    else:
        model = CAL(395)
    return model, CALEager(model)


def make_batch(case, smoke, device="cpu"):
    b, (h, w) = case.shape(smoke)
    g = torch.Generator().manual_seed(0)
    pids = torch.arange(b // 8).repeat_interleave(8)
    modality = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]).repeat(b // 8)
    return {"img": torch.randn(b, 3, h, w, generator=g).to(device), "pid": pids.to(device),
            "modality": modality.to(device), "partner": sample_partners(pids, modality, generator=g).to(device)}


def backbone(impl, batch):
    return (impl.forward_backbone(batch["img"], batch["modality"]),)


def head_loss(impl, feats, batch):
    out = impl.forward_head(feats[0], batch["modality"], batch["pid"], batch["partner"])
    return impl.loss(out)[0]


CASES = [ModelCase("cal", build, batch=BATCH, size=(288, 144), smoke_batch=8, smoke_size=(48, 48), num_instances=8,
                   make_batch=make_batch, backbone=backbone, head_loss=head_loss,
                   note="two-stream R50 18x9 tokens, Np=6, alpha=0.5, 8 ids x (4 vis + 4 IR), 395 ids")]
