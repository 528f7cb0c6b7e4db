"""Path checks on names that come from a user's manifest."""

from __future__ import annotations

import os
from pathlib import Path


def is_file(path: str | os.PathLike) -> bool:
    """``Path.is_file`` that answers False instead of raising for a name the OS cannot even look up
    (too long, embedded NUL, ...): a manifest cell is untrusted text (found by the fuzz
    campaign)."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False
