"""`reidkern bench` (the README's main-job command) measures the compiled reidkern, or fails.

Both tests run the command from the checkout's root, where the uncompiled `reidkern/` sources lie
beside `benchmarks/`: the run must import the same compiled reidkern as this test process (the
installed package in CI), and a run that can only import an uncompiled reidkern must fail with the
reason instead of skipping every reidkern provider.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import reidkern

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not (ROOT / "benchmarks" / "conftest.py").exists(),
                                reason="needs a source checkout (benchmarks/ beside tests/)")


def _bench(args, env):
    script = Path(sys.executable).with_name("reidkern")  # the console script pip installed
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "reidkern"]
    return subprocess.run(cmd + ["bench"] + args, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", **extra)
    env.pop("REIDKERN_BENCH_SMOKE", None)
    return env


@pytest.mark.skipif(not reidkern.build_info()["native"], reason="needs the compiled library")
def test_bench_measures_the_compiled_package(tmp_path):
    out = tmp_path / "results"
    run = _bench(["--smoke", "-k", "bench_evaluate_rank and not triton", "--out", str(out)], _env())
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "[1/" in run.stderr  # each benchmark announced as it starts
    env = json.loads((out / "env.json").read_text())
    assert env["native"] is True
    assert Path(env["reidkern_path"]) == Path(reidkern.__file__).resolve().parent
    rows = [line for line in (out / "report.md").read_text().splitlines() if line.startswith("| evaluate_rank")]
    providers = {line.split("|")[3].strip() for line in rows}
    assert {"eager", "reidkern-cpp"} <= providers, rows


def test_bench_fails_without_the_compiled_library(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(Path(reidkern.__file__).resolve().parent, src / "reidkern",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    run = _bench(["--smoke", "-k", "bench_evaluate_rank", "--out", str(tmp_path / "results")],
                 _env(PYTHONPATH=str(src)))
    assert run.returncode != 0
    assert "has no compiled library" in run.stdout + run.stderr, run.stdout[-2000:] + run.stderr[-2000:]
    assert not (tmp_path / "results" / "report.md").exists()
