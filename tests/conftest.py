import os

import torch

# Triton kernels run on CPU tensors only in the interpreter; it must be chosen before Triton is
# imported, so set it here, before any test imports reidkern.triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from reidkern.testing import reid_mini_dir  # noqa: E402


@pytest.fixture(scope="session")
def reid_mini():
    """The real-data folder ../shared/data/reid-mini; tests using it skip when it is absent."""
    path = reid_mini_dir()
    if path is None:
        pytest.skip("../shared/data/reid-mini not found (set REIDKERN_DATA)")
    return path
