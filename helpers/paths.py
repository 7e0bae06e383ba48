"""Where things live: the repository root and its ``tmp/`` folder."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TMP = REPO_ROOT / "tmp"
LOGS = TMP / "logs"


def fresh_dir(path: Path) -> Path:
    """Remove ``path`` if it exists (it must be inside ``tmp/``) and return it, absent."""
    path = Path(path).resolve()
    if TMP.resolve() not in path.parents:
        raise ValueError(f"refusing to remove {path}: only folders inside tmp/ are cleaned")
    shutil.rmtree(path, ignore_errors=True)
    return path


def relative(path: Path) -> str:
    """Show a path relative to the repository root when it is inside it."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)
