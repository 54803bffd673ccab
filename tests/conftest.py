import os

import torch

# Triton kernels run on CPU tensors only in the interpreter; it must be chosen before Triton is
# imported, so set it here, before any test imports reidkern.triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from pathlib import Path  # noqa: E402

from reidkern.data.paths import reid_mini_dir  # noqa: E402
from reidkern.testing import unusable_reason  # noqa: E402


@pytest.fixture(scope="session")
def reid_mini():
    """The real-data folder ../shared/data/reid-mini; tests using it skip when it is absent."""
    path = reid_mini_dir()
    if path is None:
        pytest.skip("../shared/data/reid-mini not found (set REIDKERN_DATA)")
    return Path(path)


@pytest.fixture(autouse=True)
def _device_backend_usable(request):
    """A (device, backend) case (reidkern.testing.device_backend_cases) that cannot run here is
    skipped with the reason; a compiled backend on a device that is present fails instead when
    REIDKERN_REQUIRE_NATIVE=1 (run.sh test, tools/gpu_check.sh): no silent fallback."""
    params = getattr(getattr(request.node, "callspec", None), "params", {})
    if "device" not in params or "backend" not in params:
        return
    device, backend = params["device"], params["backend"]
    reason = unusable_reason(device, backend)
    if reason is None:
        return
    present = device == "cpu" or torch.cuda.is_available()
    if present and backend in ("cpp", "cuda") and os.environ.get("REIDKERN_REQUIRE_NATIVE") == "1":
        pytest.fail(f"{device}-{backend}: {reason} (REIDKERN_REQUIRE_NATIVE=1)")
    pytest.skip(f"{device}-{backend}: {reason}")
