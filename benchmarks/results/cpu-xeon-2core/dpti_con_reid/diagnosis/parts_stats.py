"""ρ and part-diversity of DPTI at init and after the run, on 4 real PK batches (eval transforms, train-mode BN)."""
import sys, torch, torch.nn.functional as F
torch.set_num_threads(1)
from reidkern.data import ImageDataset, build_dataset, build_transforms
from reidkern.data.paths import shared_data_dir
from reidkern.models.dpti import DPTI
from reidkern.engine.checkpoint import load_checkpoint, model_state_from_checkpoint
ds = build_dataset("con-reid", shared_data_dir("con-reid"))
H, W = 64, 32
by = {}
for i, r in enumerate(ds.train): by.setdefault(r.pid, []).append(i)
pids = sorted(by); tf = build_transforms(H, W, train=False)
def pk(seed, P=16, K=4):
    g = torch.Generator().manual_seed(seed); recs = []
    for c in torch.randperm(len(pids), generator=g)[:P].tolist():
        idx = by[pids[c]]; recs += [ds.train[idx[s]] for s in torch.randperm(len(idx), generator=g)[:K].tolist()]
    d = ImageDataset(recs, tf); it = [d[i] for i in range(len(d))]
    return torch.stack([i["img"] for i in it]), torch.tensor([i["pid"] for i in it])
batches = [pk(s) for s in range(2)]
def stats(m, tag):
    m.train(); r = []
    with torch.no_grad():
        for x, y in batches:
            out = m(x); _, logs = m.loss(out, y)
            r.append((float(logs["loss_diversity"]), float(out["rho"].max(1).values.mean()), float(out["rho"].min(1).values.mean()),
                      out["rho"].argmax(1).bincount(minlength=m.num_parts).tolist()))
    print(tag, r, flush=True)
torch.manual_seed(0)
m = DPTI(71); stats(m, "init(seed0)")
m = DPTI(71); model_state_from_checkpoint(m, load_checkpoint(sys.argv[1], "dpti"), sys.argv[1]); stats(m, "after")
