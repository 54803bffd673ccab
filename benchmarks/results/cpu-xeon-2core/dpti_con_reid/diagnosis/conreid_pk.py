"""Seeded P×K batches of real Con-ReID training crops for the diagnosis scripts beside this file:
``PK(height, width).batch(seed, transform=None, P=4, K=4) -> (img [P·K, 3, H, W], pid [P·K])``
(P identities drawn by ``seed``, K crops of each; the eval transform unless one is given)."""
import torch

from reidkern.data import ImageDataset, build_dataset, build_transforms
from reidkern.data.paths import shared_data_dir


class PK:
    def __init__(self, height, width):
        self.ds = build_dataset("con-reid", shared_data_dir("con-reid"))
        self.by = {}
        for i, r in enumerate(self.ds.train):
            self.by.setdefault(r.pid, []).append(i)
        self.pids = sorted(self.by)
        self.test_tf = build_transforms(height, width, train=False)

    def batch(self, seed, transform=None, P=4, K=4):
        g = torch.Generator().manual_seed(seed)
        recs = []
        for c in torch.randperm(len(self.pids), generator=g)[:P].tolist():
            idx = self.by[self.pids[c]]
            recs += [self.ds.train[idx[s]] for s in torch.randperm(len(idx), generator=g)[:K].tolist()]
        d = ImageDataset(recs, transform or self.test_tf)
        items = [d[i] for i in range(len(d))]
        return torch.stack([it["img"] for it in items]), torch.tensor([it["pid"] for it in items])
