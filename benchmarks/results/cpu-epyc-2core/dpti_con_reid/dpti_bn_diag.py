"""Why DPTI's test mAP falls after 40 steps from random init on Con-ReID. Trains as
tools/con_reid_run.py dpti --steps 40 --height 64 --width 32 --batch-size 64 --constant-lr (the
engine's train()), then scores the init and the trained weights several ways on the whole test
split (212 queries x 5,207 gallery, standard protocol, cosine): running BN statistics (as the
engine tests), BN statistics re-estimated on training batches (precise BN), batch statistics,
the BNNeck output, and slices of the descriptor.
usage: dpti_bn_diag.py OUT STEPS '{"model_kwarg": value, "recipe": {...}}'"""
import copy, json, os, sys, time
import torch
from reidkern.data import build_dataset, build_transforms, ImageDataset
from reidkern.data.paths import shared_data_dir
from reidkern.engine import get_recipe
from reidkern.engine.run import train, build_model_for
from reidkern.engine.checkpoint import load_checkpoint, model_state_from_checkpoint
from reidkern.metrics.protocols import evaluate_image_reid

out_dir = sys.argv[1]
steps = int(sys.argv[2])
extra = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
recipe_over = extra.pop("recipe", {})
torch.set_num_threads(1)
ds = build_dataset("con-reid", shared_data_dir("con-reid"))
over = dict(height=64, width=32, batch_size=64, warmup_epochs=0, milestones=())
over.update(recipe_over)
recipe = get_recipe("dpti", val_ids=0, model_kwargs=extra, **over)
H, W = recipe.height, recipe.width
os.makedirs(out_dir, exist_ok=True)
cache = os.path.join(out_dir, f"test_{H}x{W}.pt")  # the test split decoded once
if not os.path.exists(cache):
    tf = build_transforms(H, W, train=False)
    def load(recs):
        d = ImageDataset(list(recs), tf)
        items = [d[i] for i in range(len(d))]
        return (torch.stack([it["img"] for it in items]), torch.tensor([it["pid"] for it in items]),
                torch.tensor([it["camid"] for it in items]))
    torch.save({"q": load(ds.query), "g": load(ds.gallery)}, cache)
T = torch.load(cache)
if os.environ.get("DIAG_SMOKE"):
    T = {k: tuple(t[:40] for t in v) for k, v in T.items()}

def feats(fn, imgs):
    with torch.no_grad():
        return torch.cat([fn(imgs[i:i + 256]).float() for i in range(0, len(imgs), 256)])

def score(fn, tag, res):
    t = time.time()
    qf, gf = feats(fn, T["q"][0]), feats(fn, T["g"][0])
    r = evaluate_image_reid(qf, gf, T["q"][1], T["g"][1], T["q"][2], T["g"][2], metric="cosine", max_rank=10,
                            missing="skip" if os.environ.get("DIAG_SMOKE") else "raise")
    res[tag] = {"R1": round(100 * r.rank(1), 1), "mAP": round(100 * float(r.mAP), 1), "mINP": round(100 * float(r.mINP), 1)}
    print(f"{tag:34s} {res[tag]}  ({time.time() - t:.0f}s)", flush=True)

def precise_bn(model, n_batches=1 if os.environ.get("DIAG_SMOKE") else 16):
    pm = copy.deepcopy(model)
    for b in pm.modules():
        if isinstance(b, torch.nn.modules.batchnorm._BatchNorm):
            b.reset_running_stats(); b.momentum = None  # cumulative average
    d = ImageDataset(list(ds.train), build_transforms(H, W, train=True))
    idx = torch.randperm(len(d), generator=torch.Generator().manual_seed(1))[: 64 * n_batches].view(n_batches, 64)
    pm.train()
    with torch.no_grad():
        for row in idx:
            pm(torch.stack([d[int(i)]["img"] for i in row]))
    return pm.eval()

def variants(model, prefix, res):
    model.eval()
    N, dd = model.num_parts, model.dim
    score(lambda x: model(x), prefix + "running BN", res)
    pm = precise_bn(model)
    score(lambda x: pm(x), prefix + "precise BN", res)
    score(lambda x: pm.bottleneck(pm(x)), prefix + "precise BN, BNNeck out", res)
    score(lambda x: pm(x)[:, N * dd:], prefix + "precise BN, global only", res)
    score(lambda x: torch.nn.functional.normalize(pm(x)[:, :N * dd].view(len(x), N, dd), dim=-1).flatten(1),
          prefix + "precise BN, parts normalised", res)

res = {}
t0 = time.time()
init = build_model_for(recipe, 71)
variants(init, "init: ", res)
train(recipe, ds, out_dir, steps=steps, eval_before=False, test_after=False, progress=False,
      dataset_name="con-reid", device="cpu", log=lambda s: None)
print("trained", round(time.time() - t0), "s", flush=True)
model = build_model_for(recipe, 71)
model_state_from_checkpoint(model, load_checkpoint(out_dir + "/last.pt", "dpti"), out_dir + "/last.pt")
variants(model, f"{steps} steps: ", res)
losses = [json.loads(l)["loss"] for l in open(out_dir + "/metrics.jsonl") if '"loss"' in l]
res["loss_first5"], res["loss_last5"] = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
json.dump(res, open(out_dir + "/diag.json", "w"), indent=1)
print(json.dumps(res), flush=True)
