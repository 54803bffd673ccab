"""Run under torchrun by tests/test_engine_ddp.py: trains the toy recipe of test_engine.py with
the engine's Trainer on gloo and writes rank 0's loss trajectory and final parameters."""
import json
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_engine import ToyData, ToyNet, perm_indices, toy_recipe  # noqa: E402

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


if __name__ == "__main__":
    torch.set_num_threads(1)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
    run(sys.argv[1])
    if dist.is_initialized():
        # both ranks tear gloo down together (the usual teardown; one CI run had rank 1 abort with
        # "terminate called without an active exception", at a point the log does not show)
        dist.barrier()
        dist.destroy_process_group()
