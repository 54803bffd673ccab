"""Run under torchrun by tests/test_engine_ddp.py: trains the toy recipe of test_engine.py with
the engine's Trainer on gloo, writes rank 0's loss trajectory and final parameters, and ends the
process group with the engine's teardown, checking that it stopped gloo's worker threads (left
alive, they can abort the process at interpreter exit: see reidkern/engine/ddp.py)."""
import json
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_engine import ToyData, ToyNet, perm_indices, toy_recipe  # noqa: E402

from reidkern.engine.ddp import end_distributed, init_distributed  # noqa: E402
from reidkern.engine.loader import TrainLoader  # noqa: E402
from reidkern.engine.trainer import Trainer  # noqa: E402


def run(out, global_batch=12, steps=8):
    world = dist.get_world_size() if dist.is_initialized() else 1
    torch.manual_seed(0)
    recipe = toy_recipe(batch_size=global_batch)
    data = ToyData()
    loader = TrainLoader(data, perm_indices(len(data)), global_batch // world)
    model = ToyNet(6, dropout=0.0)
    tr = Trainer(recipe, model, loader, steps, device="cpu", progress=False)
    hist = tr.fit()
    if tr.rank == 0:
        torch.save({"loss": [h["loss"] for h in hist], "tri": [h["tri"] for h in hist],
                    "params": {k: v.clone() for k, v in tr.model.state_dict().items()}}, out)


def gloo_workers():
    """Names of this process's gloo process-group worker threads (None without /proc/self/task)."""
    if not os.path.isdir("/proc/self/task"):
        return None
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:  # the thread ended meanwhile
            pass
    return [n for n in names if n.startswith("pt_gloo")]


if __name__ == "__main__":
    torch.set_num_threads(1)
    ddp = init_distributed()
    run(sys.argv[1])
    if ddp:
        before = gloo_workers()
        end_distributed()
        after = gloo_workers()
        # The teardown must free the group now, not at interpreter exit (reidkern/engine/ddp.py);
        # `before` being non-empty shows that the thread names are the ones looked for.
        if before is not None and (not before or after):
            sys.exit(f"rank {os.environ.get('RANK')}: gloo worker threads before the teardown {before}, "
                     f"after it {after}: the process group outlived destroy_process_group")
