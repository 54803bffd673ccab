"""Where the shared real test data lives."""
from __future__ import annotations

import os
from typing import Optional

__all__ = ["reid_mini_dir", "shared_data_dir"]


def reid_mini_dir(explicit: Optional[str] = None) -> Optional[str]:
    """Locate the shared ``reid-mini`` folder: ``explicit``, else ``$REIDKERN_DATA``, else
    ``../shared/data/reid-mini`` beside the source checkout or beside the current directory (an
    installed package runs from site-packages, so the checkout is found through the working
    directory). Returns None if absent."""
    if explicit is None:
        explicit = os.environ.get("REIDKERN_DATA")
    if explicit is not None:
        explicit = os.path.abspath(explicit)
        return explicit if os.path.isdir(explicit) else None
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for base in (repo, os.getcwd()):
        candidate = os.path.abspath(os.path.join(base, "..", "shared", "data", "reid-mini"))
        if os.path.isdir(candidate):
            return candidate
    return None


def shared_data_dir(name: str) -> Optional[str]:
    """Locate ``../shared/data/<name>`` (e.g. ``"con-reid"``, ``"mini-market1501"``) beside the
    source checkout or the current directory; None if absent. ``$REIDKERN_SHARED_DATA`` overrides
    the ``../shared/data`` folder."""
    env = os.environ.get("REIDKERN_SHARED_DATA")
    bases = [env] if env else []
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    bases += [os.path.join(b, "..", "shared", "data") for b in (repo, os.getcwd())]
    for base in bases:
        candidate = os.path.abspath(os.path.join(base, name))
        if os.path.isdir(candidate):
            return candidate
    return None
