"""Diagnosis script of docs/models/dpti.md ("Learning from random initialisation"); run from the
repository root with PYTHONPATH=. . The logged figures (init_stats.log, steps.log) came from the model
before the fix (commit a51c3ce), whose configuration is DPTI(71, reduce_norm=False, query_std=256 ** -0.5, triplet_metric="euclidean", detach_rho=False);
today's code builds the same structure with that call, with other random draws."""
import sys, math, torch, torch.nn.functional as F
torch.set_num_threads(1)
import os
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conreid_pk import PK
from reidkern.models.dpti import DPTI
x, y = PK(128, 64).batch(0)  # 4 ids x 4 crops at 128x64
torch.manual_seed(0)
m = DPTI(71, reduce_norm=False, query_std=256 ** -0.5, triplet_metric="euclidean", detach_rho=False).train()
with torch.no_grad():
    mid, fin = m.forward_backbone(x)
base = {k: v.clone() for k, v in m.state_dict().items()}
def stats(tag, **set_):
    m.load_state_dict(base)
    with torch.no_grad():
        for k, f in set_.items(): f(m)
        tokens = m.reduce(mid).flatten(2).transpose(1, 2)
        for l in m.encoder: tokens = l(tokens)
        cm = F.cosine_similarity(tokens, tokens.mean(1, keepdim=True), dim=-1).mean().item()
        t, rho = m.templates(tokens)
        tn = F.normalize(t, dim=-1)
        N = t.shape[1]; off = 1 - torch.eye(N)
        tc = ((tn @ tn.transpose(1, 2)) * off).sum((1, 2)).mean().item() / (N * (N - 1))
        out = m.forward_head(mid, fin)
        loss, logs = m.loss(out, y)
    print(f"{tag:28s} tokcos {cm:.3f} tmplcos {tc:.4f} div {float(logs['loss_diversity']):.4f} rho_max {rho.max(1).values.mean():.3f} tri {float(logs['loss_triplet']):.3f} featnorm {out['features'].norm(dim=1).mean():.1f}")
stats("default")
stats("q std1", q=lambda m: m.templates.part_queries.normal_(0, 1))
stats("q std 1/sqrt(d)*4", q=lambda m: m.templates.part_queries.normal_(0, 4 / 16))
stats("Wv*0.1", v=lambda m: m.encoder[0].qkv.weight[512:].mul_(0.1))
stats("Wv*0", v=lambda m: m.encoder[0].qkv.weight[512:].mul_(0.))
stats("Wv*0 + q std1", v=lambda m: m.encoder[0].qkv.weight[512:].mul_(0.), q=lambda m: m.templates.part_queries.normal_(0, 1))
stats("Wv*0 + q .25", v=lambda m: m.encoder[0].qkv.weight[512:].mul_(0.), q=lambda m: m.templates.part_queries.normal_(0, .25))
stats("no encoder", e=lambda m: setattr(m, "encoder", torch.nn.ModuleList()))
stats("no enc + q std1", e=lambda m: setattr(m, "encoder", torch.nn.ModuleList()), q=lambda m: m.templates.part_queries.normal_(0, 1))
