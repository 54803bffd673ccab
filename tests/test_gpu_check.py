"""tools/gpu_check.sh --dry-run, the GPU check as far as a machine without a GPU can take it: it
names every test file with CUDA cases and every benchmark file with reidkern providers, and says
what the build would lack before any build starts."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "gpu_check.sh"
pytestmark = pytest.mark.skipif(not SCRIPT.exists(), reason="needs a source checkout (tools/gpu_check.sh)")


def _dry_run(tmp_path, **env):
    # TMPDIR: the dry run writes its logs under mktemp -d, here the test's own folder
    return subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHON=sys.executable, TMPDIR=str(tmp_path), **env))


def _files_with(folder, pattern, marker):
    return {p.name for p in (ROOT / folder).glob(pattern) if marker in p.read_text()}


def test_dry_run_names_every_cuda_test_and_gpu_benchmark(tmp_path):
    run = _dry_run(tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    tests_line = next(line for line in run.stdout.splitlines() if "would run (tests" in line)
    named = set(re.findall(r"tests/(test_\w+\.py)", tests_line))
    assert named == _files_with("tests", "test_*.py", "device_backend_cases")
    assert {"test_attention_layers.py", "test_losses.py", "test_template_attention.py"} <= named
    assert " -k cuda " in tests_line and "REIDKERN_REQUIRE_NATIVE=1" in tests_line
    benches = set(re.findall(r"would run \((bench_\w+),", run.stdout))
    assert {f"{b}.py" for b in benches} == _files_with("benchmarks", "bench_*.py", "reidkern_providers")


def test_dry_run_reports_a_missing_compiler_first(tmp_path):
    run = _dry_run(tmp_path, NVCC="/nonexistent/nvcc")
    lines = run.stdout.splitlines()
    assert any("FAILED: missing on this machine: nvcc" in line for line in lines), run.stdout
    first_step = next(i for i, line in enumerate(lines) if "would run (build" in line)
    assert any("missing on this machine" in line for line in lines[:first_step])
