"""Atomic output files: a file appears complete at its final path, or not at all.

Every file the library or the CLI writes for the user goes through :func:`atomic_path` (or
:func:`atomic_open`): the data is written to a temporary file in the destination folder and moved
into place with ``os.replace`` (atomic on POSIX and Windows for a path on one filesystem) only when
writing succeeded, so a failure or an interrupt never leaves a truncated file or clobbers an old one.
"""
import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside ``path``; on normal exit it replaces ``path``, on an
    exception it is deleted and ``path`` is left untouched.

    Example: ``with atomic_path(out) as tmp: torch.save(state, tmp)``.

    Raises:
        FileNotFoundError: the destination folder does not exist.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path, mode="w", **kwargs):
    """``open`` for writing (``mode`` "w" or "wb") through :func:`atomic_path`."""
    if mode not in ("w", "wb", "wt"):
        raise ValueError(f"mode must be 'w', 'wt' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f
