"""Slices of the random-init DPTI descriptor (the run's 'before' model: seed 0) on Con-ReID's test split at 64x32."""
import torch, torch.nn.functional as F
torch.set_num_threads(1)
from reidkern.data import build_dataset
from reidkern.data.paths import shared_data_dir
from reidkern.engine import get_recipe
from reidkern.engine.run import build_model_for
from reidkern.engine.evaluate import evaluate_model
from reidkern.metrics import evaluate_features
ds = build_dataset("con-reid", shared_data_dir("con-reid"))
recipe = get_recipe("dpti", height=64, width=32, val_ids=0)
model = build_model_for(recipe, 71)
res, qf, gf = evaluate_model(model, recipe, ds.query, ds.gallery, device="cpu", num_workers=0, progress=False, both=False, return_features=True)
print("full", res, flush=True)
def ev(a, b, tag):
    r = evaluate_features(a, b, qf.pids, gf.pids, qf.camids, gf.camids, metric="cosine")
    print(tag, "mAP %.1f R1 %.1f" % (100 * r.mAP, 100 * r.rank(1)), flush=True)
Q, G = qf.feats, gf.feats
ev(Q[:, -256:], G[:, -256:], "global")
P, PG = Q[:, :-256].reshape(-1, 6, 256), G[:, :-256].reshape(-1, 6, 256)
print("part norms q", P.norm(dim=-1).mean(0), "global norm", Q[:, -256:].norm(dim=-1).mean())
ev(Q[:, :-256], G[:, :-256], "parts weighted")
ev(F.normalize(P, dim=-1).flatten(1), F.normalize(PG, dim=-1).flatten(1), "parts each normalised")
