"""usage: desc_variants.py OUT (after dpti_bn_diag.py OUT 40). Descriptor variants of the same DPTI weights (init and after 40 steps, BN statistics re-estimated
on 16x64 training images): one forward over the test split, several descriptors scored."""
import copy, json, os, sys, time
import torch, torch.nn.functional as F
from reidkern.data import build_dataset, build_transforms, ImageDataset
from reidkern.data.paths import shared_data_dir
from reidkern.engine import get_recipe
from reidkern.engine.run import build_model_for
from reidkern.engine.checkpoint import load_checkpoint, model_state_from_checkpoint
from reidkern.metrics.protocols import evaluate_image_reid
torch.set_num_threads(1)
ds = build_dataset("con-reid", shared_data_dir("con-reid"))
recipe = get_recipe("dpti", val_ids=0, height=64, width=32, batch_size=64, warmup_epochs=0, milestones=())
OUT = sys.argv[1]  # the folder of dpti_bn_diag.py: its test_64x32.pt and last.pt
T = torch.load(os.path.join(OUT, "test_64x32.pt"))
if os.environ.get("DIAG_SMOKE"):
    T = {k: tuple(t[:60] for t in v) for k, v in T.items()}

def precise_bn(model):
    pm = copy.deepcopy(model)
    for b in pm.modules():
        if isinstance(b, torch.nn.modules.batchnorm._BatchNorm):
            b.reset_running_stats(); b.momentum = None
    d = ImageDataset(list(ds.train), build_transforms(64, 32, train=True))
    idx = torch.randperm(len(d), generator=torch.Generator().manual_seed(1))[:(64 if os.environ.get("DIAG_SMOKE") else 1024)].view(-1, 64)
    pm.train()
    with torch.no_grad():
        for row in idx:
            pm(torch.stack([d[int(i)]["img"] for i in row]))
    return pm.eval()

def parts_of(m, imgs):
    store = []
    orig = m.descriptor
    def desc(parts, rho, glob):
        store.append((parts, rho, glob)); return orig(parts, rho, glob)
    m.descriptor = desc
    with torch.no_grad():
        for i in range(0, len(imgs), 256):
            m(imgs[i:i + 256])
    m.descriptor = orig
    return [torch.cat(z) for z in zip(*store)]

def variants(parts, rho, glob):
    N = parts.shape[1]
    w = (N * rho).unsqueeze(-1)
    pn, gn = F.normalize(parts, dim=-1), F.normalize(glob, dim=-1)
    return {"current [N rho_i f_i, g]": torch.cat([(parts * w).flatten(1), glob], 1),
            "normalised [N rho_i f_i/|f_i|, g/|g|]": torch.cat([(pn * w).flatten(1), gn], 1),
            "normalised, no rho [f_i/|f_i|, g/|g|]": torch.cat([pn.flatten(1), gn], 1),
            "normalised [sqrt(N rho_i) f_i/|f_i|, g/|g|]": torch.cat([(pn * w.sqrt()).flatten(1), gn], 1)}

res = {}
for tag, ck in (("init", None), ("40 steps", os.path.join(OUT, "last.pt"))):
    m = build_model_for(recipe, 71)
    if ck:
        model_state_from_checkpoint(m, load_checkpoint(ck, "dpti"), ck)
    m = precise_bn(m)
    t = time.time()
    q, g = parts_of(m, T["q"][0]), parts_of(m, T["g"][0])
    print(tag, "rho mean max", round(float(q[1].max(1).values.mean()), 3), f"({time.time()-t:.0f}s)", flush=True)
    for (name, qf), gf in zip(variants(*q).items(), variants(*g).values()):
        r = evaluate_image_reid(qf, gf, T["q"][1], T["g"][1], T["q"][2], T["g"][2], metric="cosine", max_rank=10, missing="skip" if os.environ.get("DIAG_SMOKE") else "raise")
        res[f"{tag}: {name}"] = {"R1": round(100 * r.rank(1), 1), "mAP": round(100 * float(r.mAP), 1), "mINP": round(100 * float(r.mINP), 1)}
        print(f"{tag}: {name:45s} {res[f'{tag}: {name}']}", flush=True)
json.dump(res, open(os.path.join(OUT, "desc_variants.json"), "w"), indent=1)
