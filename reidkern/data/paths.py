"""Where the shared real test data lives."""
from __future__ import annotations

import os
from typing import Optional

__all__ = ["reid_mini_dir"]


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
