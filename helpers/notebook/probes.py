"""What a run left on disk: the files of a runtime's session state, files holding a text."""

from __future__ import annotations

import unicodedata
from pathlib import Path

from helpers.run import relative


def session_leftovers(home: Path | None) -> list[str]:
    """Every file a runtime home's ``session-state`` holds, dot-folders included."""
    if home is None or not (Path(home) / "session-state").exists():
        return []
    state = Path(home) / "session-state"
    return sorted(str(p.relative_to(state)) for p in state.rglob("*") if p.is_file())


def file_contains(root: Path, *needles: str) -> list[str]:
    """Files under ``root`` whose text holds any of ``needles`` (case-insensitive, NFC, any script).

    Files are read as UTF-8 (undecodable bytes kept as U+FFFD), so ``Émeraude`` is found in a
    file that says ``ÉMERAUDE``, as ``AURORA`` is in one that says ``aurora``.
    """
    hits = []
    wanted = [unicodedata.normalize("NFC", needle).casefold() for needle in needles if needle]
    for path in Path(root).rglob("*"):
        if path.is_file():
            text = unicodedata.normalize("NFC", path.read_bytes().decode("utf-8", "replace"))
            if any(needle in text.casefold() for needle in wanted):
                hits.append(relative(path))
    return hits
