"""reidkern: fused CUDA, Triton and C++ kernels, layers and models for person re-identification.

``reidkern.build_info()`` says what was compiled. Evaluation: :mod:`reidkern.metrics`; re-ranking:
:mod:`reidkern.rerank`; layers and losses: :mod:`reidkern.nn`; backbones: :mod:`reidkern.models`.
"""
import importlib.util

import torch

from reidkern import _library

__version__ = "0.1.0"


def build_info() -> dict:
    """What this installation can run.

    Returns a dict with: ``version``; ``native`` (compiled library loaded) and ``native_error``
    (why not); ``backends`` usable here; ``with_cuda`` and ``cuda_archs`` of the build; ``torch_built``
    (torch version compiled against) and ``torch_runtime``; ``compiler``; ``cpu_threads`` of the
    CPU kernels; ``triton`` version or None; ``cuda_available`` at run time.
    """
    C = _library._C
    native = C is not None
    facts = dict(C.BUILD_INFO) if native else {}
    triton_version = None
    if importlib.util.find_spec("triton") is not None:
        try:
            import triton
            triton_version = triton.__version__
        except Exception as exc:  # a broken triton install must not break build_info
            triton_version = f"unusable ({type(exc).__name__})"
    backends = ["reference"]
    if native:
        backends.insert(0, "cpp")
        if facts.get("with_cuda"):
            backends.insert(1, "cuda")
    if triton_version and not str(triton_version).startswith("unusable"):
        backends.insert(len(backends) - 1, "triton")
    return {
        "version": __version__,
        "native": native,
        "native_error": _library.NATIVE_ERROR,
        "backends": backends,
        "with_cuda": bool(facts.get("with_cuda", False)),
        "cuda_archs": [a for a in str(facts.get("cuda_archs", "")).split(",") if a],
        "torch_built": facts.get("torch_version"),
        "torch_runtime": torch.__version__,
        "compiler": facts.get("compiler"),
        "cpu_threads": C.num_threads() if native else torch.get_num_threads(),
        "triton": triton_version,
        "cuda_available": torch.cuda.is_available(),
    }


from reidkern import metrics, nn, ops, rerank  # noqa: E402  (after build_info's helpers)

__all__ = ["build_info", "metrics", "nn", "ops", "rerank", "__version__"]
