"""The benchmark suite measures the compiled reidkern, or fails.

* The run stops at once, with the reason, when the imported reidkern has no compiled library (for
  example a source checkout's uncompiled ``reidkern/`` shadowing the installed package): every
  reidkern provider would otherwise have nothing to measure.
* ``--bench-set representative`` keeps the sizes each bench file lists in ``REPRESENTATIVE`` (what
  ``reidkern bench`` runs by default: one paper size per op, a few minutes on 2 CPU cores); on a CPU
  it also leaves out the ``torch.compile`` providers, whose compilation alone takes tens of seconds
  per case there. ``full`` (pytest's default) runs every size and provider.
* Each benchmark is announced as it starts (``[i/n] name``, minutes since the start), so a run cut
  short still tells how far it got.
* ``--bench-env PATH`` writes env.json (device, versions, build facts, git revision, and where
  reidkern was imported from) for the reidkern that this run imports.
"""
import os
import sys
import time

import pytest
import torch

# Triton on CPU tensors needs the interpreter, chosen before Triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, os.path.dirname(__file__))  # `import _common` from the bench files

import reidkern  # noqa: E402  (after TRITON_INTERPRET)


def pytest_addoption(parser):
    parser.addoption("--bench-set", choices=("representative", "full"), default="full",
                     help="representative: the sizes in each bench file's REPRESENTATIVE; full: all")
    parser.addoption("--bench-env", default=None, help="write env.json (device, versions, revision) here")


def pytest_configure(config):
    info = reidkern.build_info()
    if not info["native"]:
        raise pytest.UsageError(
            f"the benchmark suite measures reidkern's compiled kernels, but the reidkern imported "
            f"from {os.path.dirname(reidkern.__file__)} has no compiled library "
            f"({info['native_error']}). Install it (pip install .) and run from outside the "
            "checkout's root (`reidkern bench` does), or build in place (python setup.py build_ext "
            "--inplace) and set PYTHONPATH to the checkout.")
    if config.getoption("--bench-env"):
        from reidkern.cli import write_env

        write_env(config.getoption("--bench-env"), os.path.dirname(os.path.dirname(__file__)))


def pytest_report_header(config):
    info = reidkern.build_info()
    return (f"reidkern {info['version']} from {os.path.dirname(reidkern.__file__)}: backends "
            f"{info['backends']}, CUDA archs {info['cuda_archs'] or 'none'}, torch {info['torch_runtime']}")


def _params_of(item):
    return getattr(getattr(item, "callspec", None), "params", {})


def _size_of(item):
    params = _params_of(item)
    return params.get("size", params.get("name"))


def _compile_on_cpu(item):
    return "compile" in str(_params_of(item).get("provider", "")) and not torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if config.getoption("--bench-set") != "representative":
        return
    keep, drop = [], []
    for item in items:
        wanted = getattr(item.module, "REPRESENTATIVE", set())
        (keep if _size_of(item) in wanted and not _compile_on_cpu(item) else drop).append(item)
    items[:] = keep
    config.hook.pytest_deselected(items=drop)


_progress = {"start": None, "done": 0, "total": "?"}


def pytest_collection_finish(session):
    _progress["total"] = len(session.items)


def pytest_runtest_logstart(nodeid, location):
    if _progress["start"] is None:
        _progress["start"] = time.perf_counter()
    _progress["done"] += 1
    minutes = (time.perf_counter() - _progress["start"]) / 60
    # stderr, flushed: seen as it happens even when stdout goes to a pipe
    print(f"\n[{_progress['done']}/{_progress['total']}] {minutes:5.1f} min  {nodeid}", file=sys.stderr,
          flush=True)
