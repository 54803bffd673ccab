"""LF2 (ICPR 2022, official code DJEddyking/LF2): stage-2 student on ResNet-50 (last stride 1) at
256×128, one P×K batch of 64 (16 pseudo-identities × 4) carrying three pseudo-label sets (global,
upper, lower), k = 700 clusters (Duke→Market). The official step runs three such batches (one per
label set) through the same network; one batch shows the same per-image costs. reidkern's part is
the batch-hard mining of the three soft-triplet terms (the twin mines on dense [B, B] masks)."""
import torch

from model_cases import ModelCase, pk_labels
from reidkern.models.lf2 import LF2, LF2Net, lf2_resnet50
from reidkern.models.lf2_eager import LF2Eager


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 32, 3, stride=4, padding=1)

    def featuremaps(self, x):
        return torch.relu(self.conv(x))


def build(smoke):
    net = LF2Net(_Tiny(), 32, num_classes=8) if smoke else lf2_resnet50(num_classes=700)
    model = LF2(net, update_teacher_stats=False)
    return model, LF2Eager(model)


def make_batch(case, smoke, device="cpu"):
    b, (h, w) = case.shape(smoke)
    g = torch.Generator().manual_seed(0)
    y = pk_labels(b, case.num_instances)
    k = 8 if smoke else 700
    # Upper and lower label sets: other P×K groupings of the same batch.
    y_u = y.view(-1, case.num_instances).t().reshape(-1)
    y_l = y.flip(0)
    return {"img": torch.randn(b, 3, h, w, generator=g).to(device), "pid": (y % k).to(device),
            "pid_upper": y_u.to(device), "pid_lower": y_l.to(device)}


def head_loss(impl, feats, batch):
    return impl.loss(impl.forward_head(*feats), batch["pid"], batch["pid_upper"], batch["pid_lower"])[0]


CASES = [ModelCase("lf2", build, batch=64, size=(256, 128), smoke_batch=8, smoke_size=(32, 16),
                   note="student step, 3 soft-triplet terms, 700 clusters", make_batch=make_batch,
                   head_loss=head_loss)]
