"""Argument checks shared by the ops: clear ValueError/TypeError naming the argument."""
import numpy as np
import torch


def as_tensor(x, name: str, device=None) -> torch.Tensor:
    """Turns a tensor, NumPy array or sequence into a tensor; TypeError naming ``name`` otherwise."""
    if isinstance(x, torch.Tensor):
        return x if device is None else x.to(device)
    try:
        return torch.as_tensor(np.asarray(x), device=device)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a tensor or array, got {type(x).__name__}") from exc


def check_ndim(x: torch.Tensor, ndim: int, name: str, shape_doc: str) -> None:
    if x.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D {shape_doc}, got shape {tuple(x.shape)}")


def check_ids(x, length: int, name: str, length_doc: str, device) -> torch.Tensor:
    """Integer id vector (pids/camids/labels) of the given length, as contiguous int64 on ``device``."""
    x = as_tensor(x, name)
    if x.dim() != 1:
        raise ValueError(f"{name} must be 1-D [{length_doc}], got shape {tuple(x.shape)}")
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{name} must hold integers, got dtype {x.dtype}")
    if x.shape[0] != length:
        raise ValueError(f"{name} has length {x.shape[0]}, expected {length_doc} = {length}")
    return x.to(device=device, dtype=torch.int64).contiguous()


def check_finite(x: torch.Tensor, name: str) -> None:
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")


def floating(x: torch.Tensor, name: str) -> torch.Tensor:
    """float32/float64 stay; float16/bfloat16 and integers are widened exactly."""
    if x.dtype in (torch.float32, torch.float64):
        return x
    if x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    if x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{name} must be a real-valued tensor, got dtype {x.dtype}")
    return x.double()
