"""Quick DPTI training experiments (Adam, P×K batches of real Con-ReID crops; losses on 2 fixed batches
before/after). Usage: dpti_steps.py H W steps lr qstd [DPTI_kwarg=literal ...] [warm=N] [wv=scale] [P=ids] [detach=1].
qstd > 0 re-draws the queries N(0, qstd²), < 0 orthogonal ×|qstd|, 0 keeps the model's init. Diagnosis script of docs/models/dpti.md ("Learning from random initialisation"); run from the
repository root with PYTHONPATH=. . Each section of steps.log names the model it ran: those "before the fix" ran commit a51c3ce,
whose configuration is DPTI(71, reduce_norm=False, query_std=256 ** -0.5, triplet_metric="euclidean", detach_rho=False);
today's code builds the same structure with that call, with other random draws."""
import sys, time, math, ast, torch, torch.nn.functional as F
torch.set_num_threads(1)
import os
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conreid_pk import PK
from reidkern.data import build_transforms
from reidkern.models.dpti import DPTI
H, W, steps, lr, qstd = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
kw = {}
warm = 0; wv = None; P = 4
for a in sys.argv[6:]:
    k, v = a.split("=", 1)
    if k == "warm": warm = int(v); continue
    if k == "wv": wv = float(v); continue
    if k == "P": P = int(v); continue
    kw[k] = ast.literal_eval(v)
_pk = PK(H, W)
tf_tr = build_transforms(H, W, train=True, random_erasing=0.0)
tf = _pk.test_tf
def pk(seed, tfm, P=None, K=4):
    return _pk.batch(seed, tfm, P=P or globals()['P'], K=K)
torch.manual_seed(0)
m = DPTI(71, **kw)  # Con-ReID: 71 training ids
if qstd > 0:
    with torch.no_grad(): m.templates.part_queries.normal_(0, qstd)
elif qstd < 0:
    torch.nn.init.orthogonal_(m.templates.part_queries); m.templates.part_queries.data *= -qstd
if wv is not None:
    with torch.no_grad():
        for l in m.encoder: l.qkv.weight[2 * m.dim:].mul_(wv)
fixed = [pk(1000 + i, tf) for i in range(2)]
def evalloss():
    # train-mode forward (BN batch stats) without grad on fixed batches
    tot = {}
    with torch.no_grad():
        for x, y in fixed:
            out = m(x); l, logs = m.loss(out, y)
            pn = F.normalize(out["parts"], dim=-1)
            logs["pcos"] = (pn @ pn.transpose(1, 2)).mean()
            logs["loss"] = l
            logs["rho_max"] = out["rho"].max(1).values.mean()
            for k, v in logs.items(): tot[k] = tot.get(k, 0) + float(v) / len(fixed)
    return {k: round(v, 3) for k, v in tot.items()}
m.train()
print("init", evalloss(), flush=True)
opt = torch.optim.Adam(m.parameters(), lr=lr, weight_decay=5e-4)
t0 = time.time()
for s in range(steps):
    for gr in opt.param_groups: gr["lr"] = lr * min(1.0, (s + 1) / warm) if warm else lr
    x, y = pk(s, tf_tr)
    out = m(x); l, logs = m.loss(out, y)
    opt.zero_grad(); l.backward(); opt.step()
    print(s, round(float(l), 3), {k: round(float(v), 3) for k, v in logs.items()}, f"{time.time()-t0:.0f}s", flush=True)
print("final", evalloss(), flush=True)
