"""ρ collapse of a DPTI run with ρ's gradient: rho_collapse.py RUN/last.pt (PYTHONPATH=. from the repository root)."""
import os
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'parts_stats.py')).read().split('batches = ')[0])
x, y = pk(0)
def why(m, tag):
    m.train()
    with torch.no_grad():
        mid, fin = m.forward_backbone(x)
        t0 = m.reduce_norm(m.reduce(mid)).flatten(2).transpose(1, 2)
        t = t0
        for l in m.encoder: t = l(t)
        q = m.templates.part_queries
        abar = t.mean(1)
        lg = abar @ q.t()
        rho = lg.softmax(-1)
        print(tag, "|q|", q.norm(dim=1).numpy().round(1), "|tok0|", round(float(t0.norm(dim=-1).mean()), 1), "|A|", round(float(t.norm(dim=-1).mean()), 1),
              "|abar|", round(float(abar.norm(dim=-1).mean()), 1), "abar batch-cos", round(float(F.cosine_similarity(abar, abar.mean(0, keepdim=True)).mean()), 3),
              "logit mean per part", lg.mean(0).numpy().round(1), "rho argmax", rho.argmax(1).bincount(minlength=6).tolist(), flush=True)
torch.manual_seed(0)
m = DPTI(71, detach_rho=False); why(m, "init ")
m = DPTI(71, detach_rho=False); model_state_from_checkpoint(m, load_checkpoint(sys.argv[1], "dpti"), sys.argv[1]); why(m, "after")
