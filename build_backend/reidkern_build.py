"""PEP 517 build backend: setuptools, plus the torch already installed in the user's environment.

reidkern's C++/CUDA code compiles against the installed torch's headers and libraries. Listing torch
in ``build-system.requires`` would make pip download a second (newest, multi-GB CUDA) torch into an
isolated build environment and compile against a torch the user does not run. Instead:

* with ``pip install --no-build-isolation .`` the build simply imports the environment's torch;
* with plain ``pip install .`` (build isolation on) this backend asks the same interpreter, started
  in isolated mode (``-I``, which ignores pip's PYTHONPATH tweaks), where its torch lives and appends
  that site-packages directory to ``sys.path`` *after* the build requirements.

If no torch is installed at all, the build stops with a clear message instead of downloading one.
"""
import os
import subprocess
import sys

from setuptools import build_meta as _orig
from setuptools.build_meta import *  # noqa: F401,F403  (re-export the PEP 517 hooks)


def _ensure_torch_importable():
    try:
        import torch  # noqa: F401
        return
    except ImportError:
        pass
    probe = "import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE")}
    res = subprocess.run([sys.executable, "-I", "-c", probe], capture_output=True, text=True, env=env)
    if res.returncode != 0 or not res.stdout.strip():
        raise RuntimeError(
            "reidkern builds against the torch installed in your environment, and none was found.\n"
            "Install torch first (e.g. `pip install torch==2.13.0`), then `pip install .`.\n"
            "reidkern never lets the build download its own torch."
        )
    site = res.stdout.strip().splitlines()[-1]
    if site not in sys.path:
        sys.path.append(site)
    import torch  # noqa: F401,E402


def get_requires_for_build_wheel(config_settings=None):
    return _orig.get_requires_for_build_wheel(config_settings)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _ensure_torch_importable()
    return _orig.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    _ensure_torch_importable()
    return _orig.build_editable(wheel_directory, config_settings, metadata_directory)
