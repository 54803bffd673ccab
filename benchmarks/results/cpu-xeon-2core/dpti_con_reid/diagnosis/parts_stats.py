"""ρ and part-diversity of DPTI at init and after the run, on 4 real PK batches (eval transforms, train-mode BN)."""
import sys, torch, torch.nn.functional as F
torch.set_num_threads(1)
import os
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conreid_pk import PK
from reidkern.models.dpti import DPTI
from reidkern.engine.checkpoint import load_checkpoint, model_state_from_checkpoint
_pk = PK(64, 32)
def pk(seed, P=16, K=4):
    return _pk.batch(seed, P=P, K=K)
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
