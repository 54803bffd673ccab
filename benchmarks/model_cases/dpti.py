"""DPTI (arXiv 2208.11440): ResNet-50 (last stride 1) at 256×128, batch 64 = 16 ids × 4, 751 ids
(Market-1501), the defaults of reidkern.models.DPTI (N = 6, d = 256, layer3 → layer4)."""
from model_cases import ModelCase
from reidkern.models.dpti import DPTI
from reidkern.models.dpti_eager import DPTIEager


def build(smoke):
    if smoke:
        model = DPTI(8, num_parts=3, dim=16, mid_stage="layer1", final_stage="layer2", part_heads=2)
    else:
        model = DPTI(751)
    return model, DPTIEager(model)


CASES = [ModelCase("dpti", build, batch=64, size=(256, 128), smoke_batch=8, smoke_size=(32, 16),
                   note="N=6, d=256, layer3->layer4, 751 ids")]
