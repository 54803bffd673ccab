import os
import sys

import torch

# Triton on CPU tensors needs the interpreter, chosen before Triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, os.path.dirname(__file__))  # `import _common` from the bench files
