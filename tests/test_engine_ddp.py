"""DDP under torchrun (gloo, CPU): two processes with half the batch each follow the loss
trajectory of one process with the whole batch (same global batches, triplet mined across
processes), within float tolerance; the engine's teardown stops gloo's threads before exit."""
import os
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "engine_ddp_script.py")


def test_two_gloo_processes_match_one_process(tmp_path):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    subprocess.run([sys.executable, SCRIPT, str(one)], env=env, check=True, timeout=300)
    # Each rank exits non-zero if gloo's worker threads outlive the teardown (engine_ddp_script.py).
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           SCRIPT, str(two)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = torch.load(one), torch.load(two)
    assert len(a["loss"]) == len(b["loss"]) == 8
    torch.testing.assert_close(torch.tensor(b["tri"]), torch.tensor(a["tri"]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(b["loss"]), torch.tensor(a["loss"]), rtol=1e-5, atol=1e-6)
    for k in a["params"]:
        torch.testing.assert_close(b["params"][k], a["params"][k], rtol=1e-4, atol=1e-5, msg=k)
