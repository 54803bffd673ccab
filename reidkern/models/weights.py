"""Loading weights from local files into reidkern modules — never from the network.

One place for the rules every backbone follows:

* ``read_state_dict(path)`` reads ``.pth``/``.pt``/``.bin``/``.tar``/``.ckpt`` files with
  ``torch.load(weights_only=True)`` (no pickled code is run) and ``.safetensors`` files with
  the optional ``safetensors`` package. Common checkpoint wrappers are unwrapped: a dict whose
  ``"state_dict"``, ``"model"``, ``"model_state"``, ``"model_state_dict"`` or ``"module"`` entry
  holds the tensors, and a ``"module."`` prefix left by ``nn.DataParallel``/DDP. A module's
  extra state (``get_extra_state``: ``..._extra_state`` entries, e.g. CAL's MatchDistill record
  of its training run) is not weights and is dropped.
* ``load_weights(module, weights, strict=True)`` compares keys and shapes first and raises one
  ``ValueError`` that lists every missing, unexpected and shape-mismatched key; with
  ``strict=False`` it loads what matches, warns, and returns the same lists in a
  ``LoadResult``.
* Fine-tuning on another dataset: a model lists its identity-classifier tensors in
  ``id_classifier_prefixes`` (a class attribute ``load_weights`` reads). A checkpoint tensor
  under one of those prefixes whose shape differs only in size (another number of identities)
  is skipped — the layer keeps its fresh initialisation — and reported (``UserWarning`` and
  ``LoadResult.skipped_keys``), as torchreid's ``load_pretrained_weights`` does; every other
  mismatch still raises. One rule for every model instead of one per ``load_weights``.

ONNX files (OSNet) are read by :mod:`reidkern.models.backbones.osnet_onnx`, which maps the
ONNX initializers to a state_dict and then goes through ``load_weights`` too.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable, Iterable, Mapping, NamedTuple, Optional, Sequence, Union

import torch
from torch import nn

__all__ = ["LoadResult", "read_state_dict", "load_weights", "WeightsLike", "ID_CLASSIFIER_ATTR"]

WeightsLike = Union[str, "os.PathLike[str]", Mapping[str, torch.Tensor]]

_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".tar", ".ckpt")
_WRAPPER_KEYS = ("state_dict", "model", "model_state", "model_state_dict", "module")
# Buffers that old checkpoints lack and that BatchNorm recreates itself (torchvision's
# pre-1.0 ResNet files, ONNX exports): absent from a checkpoint is not an error.
_OPTIONAL_SUFFIXES = (".num_batches_tracked",)
_MAX_LISTED = 25
# Class attribute naming a model's identity-classifier state_dict prefixes (see the module doc).
ID_CLASSIFIER_ATTR = "id_classifier_prefixes"


class LoadResult(NamedTuple):
    """What ``load_weights`` did.

    missing_keys: model keys the checkpoint lacks (not loaded).
    unexpected_keys: checkpoint keys the model lacks (not loaded).
    mismatched_keys: ``(key, checkpoint_shape, model_shape)`` for keys present in both with
        different shapes (not loaded).
    ignored_keys: checkpoint keys dropped on purpose by ``ignore_prefixes`` (e.g. a
        classifier head the backbone does not have).
    skipped_keys: ``(key, checkpoint_shape, model_shape)`` for identity-classifier tensors of
        another size (a checkpoint trained on another number of identities): not loaded, left at
        their initialisation; not an error (``ok`` stays True).
    """

    missing_keys: list
    unexpected_keys: list
    mismatched_keys: list
    ignored_keys: list
    skipped_keys: tuple = ()

    @property
    def ok(self) -> bool:
        return not (self.missing_keys or self.unexpected_keys or self.mismatched_keys)


def _listing(title: str, items: Sequence) -> str:
    if not items:
        return ""
    shown = ", ".join(str(k) for k in items[:_MAX_LISTED])
    more = f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return f"\n  {title} ({len(items)}): {shown}{more}"


def _is_extra_state(key) -> bool:
    """torch's key for a module's ``get_extra_state()`` (any object, not a tensor)."""
    return isinstance(key, str) and (key == "_extra_state" or key.endswith("._extra_state"))


def _unwrap(obj, source: str) -> dict:
    """Find the flat ``{name: Tensor}`` dict inside a loaded checkpoint object."""
    for _ in range(3):
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) or _is_extra_state(k)
                                                    for k, v in obj.items()):
            break
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
            if inner is not None:
                obj = inner
                continue
        break
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{source}: expected a state_dict (a non-empty dict of tensors), got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor) and not _is_extra_state(k)]
    if bad:
        raise ValueError(
            f"{source}: not a state_dict: entries that are not tensors: {bad[:_MAX_LISTED]}"
        )
    sd = {k: v for k, v in obj.items() if not _is_extra_state(k)}
    if not sd:
        raise ValueError(f"{source}: expected a state_dict (a non-empty dict of tensors), got extra state only")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def read_state_dict(path: Union[str, "os.PathLike[str]"], *, map_location: str = "cpu") -> dict:
    """Read a flat state_dict ``{name: Tensor}`` from a local file.

    Args:
        path: a ``.pth``/``.pt``/``.bin``/``.tar``/``.ckpt`` file (read with
            ``torch.load(weights_only=True)``) or a ``.safetensors`` file (needs the
            ``safetensors`` package).
        map_location: device the tensors are loaded to (default ``"cpu"``).

    Returns:
        dict mapping parameter/buffer names to tensors, with checkpoint wrappers
        (``state_dict``/``model``/... entries, ``module.`` prefixes) removed.

    Raises:
        FileNotFoundError: the file does not exist.
        ImportError: a ``.safetensors`` file and ``safetensors`` is not installed.
        ValueError: an unknown suffix (``.onnx`` included: use the OSNet reader), a file
            that cannot be read as weights, or content that is not a dict of tensors.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path!r} (reidkern never downloads weights)")
    lower = path.lower()
    if lower.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(
                f"reading {path!r} needs the optional 'safetensors' package: pip install safetensors"
            ) from e
        try:
            obj = load_file(path, device=map_location)
        except Exception as e:
            raise ValueError(f"{path!r} could not be read as a safetensors file: {e}") from e
    elif lower.endswith(_TORCH_SUFFIXES):
        try:
            obj = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:
            raise ValueError(
                f"{path!r} could not be read with torch.load(weights_only=True): {e}"
            ) from e
    elif lower.endswith(".onnx"):
        raise ValueError(
            f"{path!r}: ONNX weights are read by the OSNet loader only "
            "(reidkern.models.backbones.osnet_x0_25(weights=...))"
        )
    else:
        raise ValueError(
            f"{path!r}: unknown weights format; expected one of "
            f"{', '.join(_TORCH_SUFFIXES + ('.safetensors',))}"
        )
    return _unwrap(obj, repr(path))


def as_state_dict(weights: WeightsLike) -> dict:
    """A path → ``read_state_dict(path)``; a mapping → its flat, unwrapped copy."""
    if isinstance(weights, (str, os.PathLike)):
        return read_state_dict(weights)
    if isinstance(weights, Mapping):
        return _unwrap(weights, "weights")
    raise TypeError(
        f"weights: expected a file path or a state_dict mapping, got {type(weights).__name__}"
    )


def load_weights(
    module: nn.Module,
    weights: WeightsLike,
    *,
    strict: bool = True,
    ignore_prefixes: Iterable[str] = (),
    transform: Optional[Callable[[dict], dict]] = None,
    id_classifier_prefixes: Optional[Iterable[str]] = None,
) -> LoadResult:
    """Load local weights into ``module`` with key and shape checks.

    Args:
        module: the module to fill (in place).
        weights: a local file path (see ``read_state_dict``) or a state_dict mapping.
        strict: if True (default) any missing, unexpected or shape-mismatched key raises
            ``ValueError`` and nothing is loaded; if False the matching keys are loaded,
            a ``UserWarning`` lists the rest, and the lists are returned.
        ignore_prefixes: checkpoint keys starting with one of these are dropped silently
            (reported in ``LoadResult.ignored_keys``), e.g. ``("fc.",)`` for a classifier
            head the backbone does not build.
        transform: optional function applied to the flat state_dict before matching (used by
            backbones to rename keys or resize position embeddings).
        id_classifier_prefixes: state_dict prefixes of ``module``'s identity classifiers
            (default: ``module.id_classifier_prefixes`` if it has one, else none). A tensor under
            one of them with the same number of dimensions but another size (a checkpoint trained
            on another number of identities) is skipped with a ``UserWarning`` naming it, even
            when ``strict``; any other shape difference is a mismatch as usual.

    Returns:
        LoadResult(missing_keys, unexpected_keys, mismatched_keys, ignored_keys, skipped_keys).

    Raises:
        FileNotFoundError, ValueError, ImportError, TypeError: see ``read_state_dict``; and
        ValueError listing the key problems when ``strict`` is True.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module: expected nn.Module, got {type(module).__name__}")
    sd = as_state_dict(weights)
    if transform is not None:
        sd = transform(sd)
    prefixes = tuple(ignore_prefixes)
    ignored = sorted(k for k in sd if prefixes and k.startswith(prefixes))
    sd = {k: v for k, v in sd.items() if k not in set(ignored)}

    target = {k: v for k, v in module.state_dict().items() if not _is_extra_state(k)}
    missing = sorted(
        k for k in target if k not in sd and not k.endswith(_OPTIONAL_SUFFIXES)
    )
    unexpected = sorted(k for k in sd if k not in target)
    differing = sorted(
        (k, tuple(sd[k].shape), tuple(target[k].shape))
        for k in sd
        if k in target and tuple(sd[k].shape) != tuple(target[k].shape)
    )
    heads = tuple(getattr(module, ID_CLASSIFIER_ATTR, ()) if id_classifier_prefixes is None
                  else id_classifier_prefixes)
    # Another number of identities changes a classifier's size, never its rank.
    skipped = [d for d in differing if heads and d[0].startswith(heads) and len(d[1]) == len(d[2])]
    mismatched = [d for d in differing if d not in skipped]
    result = LoadResult(missing, unexpected, mismatched, ignored, skipped)
    if not result.ok:
        msg = (
            f"weights do not match {type(module).__name__}:"
            + _listing("missing keys", missing)
            + _listing("unexpected keys", unexpected)
            + _listing("shape mismatches (key, checkpoint, model)", mismatched)
        )
        if strict:
            raise ValueError(msg + "\n  (pass strict=False to load the matching keys only)")
        warnings.warn(msg, UserWarning, stacklevel=2)
    if skipped:
        warnings.warn(
            f"weights: the identity classifiers of {type(module).__name__} differ in size from the "
            "checkpoint's (trained on another number of identities): not loaded, they keep their "
            "fresh initialisation; every other tensor was loaded."
            + _listing("skipped (key, checkpoint, model)", skipped),
            UserWarning, stacklevel=2)
    bad = {k for k, _, _ in differing}
    loadable = {
        k: v.to(dtype=target[k].dtype) if v.is_floating_point() else v
        for k, v in sd.items()
        if k in target and k not in bad
    }
    module.load_state_dict(loadable, strict=False)
    return result
