"""Where the shared real test data lives."""
from __future__ import annotations

import os
from typing import Optional

__all__ = ["reid_mini_dir"]


def reid_mini_dir(explicit: Optional[str] = None) -> Optional[str]:
    """Locate the shared ``reid-mini`` folder: ``explicit``, else ``$REIDKERN_DATA``, else
    ``../shared/data/reid-mini`` relative to the repository root. Returns None if absent."""
    if explicit is None:
        explicit = os.environ.get("REIDKERN_DATA")
    if explicit is None:
        repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        explicit = os.path.join(repo, "..", "shared", "data", "reid-mini")
    explicit = os.path.abspath(explicit)
    return explicit if os.path.isdir(explicit) else None
