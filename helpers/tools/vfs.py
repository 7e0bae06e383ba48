"""A per-user, in-memory filesystem: one dict of path -> text, with safe paths and limits."""

from __future__ import annotations

import threading
import unicodedata
from collections.abc import Mapping
from types import MappingProxyType

from helpers.errors import VfsError

MAX_FILE_BYTES = 64 * 1024
MAX_FILES = 100
MAX_PATH_CHARS = 200


class VirtualFS:
    """One user's files. Every method is thread-safe; a refused call changes nothing."""

    def __init__(
        self, owner: str, max_file_bytes: int = MAX_FILE_BYTES, max_files: int = MAX_FILES
    ) -> None:
        self.owner = owner
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self._files: dict[str, str] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"VirtualFS(owner={self.owner!r}, files={len(self._files)})"

    @property
    def files(self) -> Mapping[str, str]:
        """A read-only view of the files (path -> text)."""
        return MappingProxyType(self._files)

    def snapshot(self) -> dict[str, str]:
        """A copy of the files, for comparing before and after."""
        with self._lock:
            return dict(self._files)

    def write(self, path: str, content: str) -> str:
        """Create or replace a file; returns a one-line confirmation."""
        clean, size = check_file(path, content, self.max_file_bytes)
        with self._lock:
            if clean not in self._files and len(self._files) >= self.max_files:
                raise VfsError(
                    f"Refused: this user already has {self.max_files} files, the most allowed."
                )
            created = clean not in self._files
            self._files[clean] = content
        return f"{'Created' if created else 'Replaced'} {clean} ({size} bytes)."

    def read(self, path: str) -> str:
        """Return a file's text."""
        clean = check_path(path)
        with self._lock:
            if clean not in self._files:
                raise VfsError(
                    f"No file named {clean}. Use list_files to see the files that exist."
                )
            return self._files[clean]

    def list(self) -> list[str]:
        """All paths, sorted."""
        with self._lock:
            return sorted(self._files)


# Cc: controls (C0, DEL, C1); Cf: format (zero-width, bidi overrides and isolates, BOM);
# Co/Cs/Cn: private use, surrogates, unassigned; Zl/Zp: line and paragraph separators.
_INVISIBLE_CATEGORIES = {"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp"}


def check_path(path: object) -> str:
    """Return the path, NFC-normalised, if it is a safe relative path, else raise VfsError.

    A leading ``./`` is dropped (``./notes.md`` is ``notes.md``); any other ``.`` or ``..`` part
    is refused.

    Names that look alike must be one file: ``é`` typed as one code point (NFC) or as ``e`` plus
    a combining accent (NFD) are stored under the NFC form, and characters that print nothing or
    reorder text (controls, zero-width, bidirectional overrides) are refused.
    """
    if not isinstance(path, str) or not path.strip():
        raise VfsError("Refused: the path is empty. Give a relative path such as notes.md.")
    for ch in path:
        if unicodedata.category(ch) in _INVISIBLE_CATEGORIES:
            name = unicodedata.name(ch, "a control character")
            raise VfsError(
                f"Refused: the path contains U+{ord(ch):04X} ({name}), which prints nothing or "
                "reorders text; use visible characters only."
            )
    path = unicodedata.normalize("NFC", path)
    while path.startswith("./"):  # "./notes.md", as real models often write it, is notes.md
        path = path[2:]
    if "\\" in path:
        raise VfsError("Refused: use forward slashes (/) in paths, not backslashes.")
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        raise VfsError(f"Refused: {path!r} is absolute; paths are relative to your own folder.")
    if len(path) > MAX_PATH_CHARS:
        raise VfsError(f"Refused: the path is longer than {MAX_PATH_CHARS} characters.")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise VfsError(
            f"Refused: {path!r} has an empty, '.' or '..' part; "
            "paths may not leave your own folder."
        )
    if path != path.strip():
        raise VfsError("Refused: the path starts or ends with spaces.")
    return path


def check_file(path: object, content: object, max_bytes: int) -> tuple[str, int]:
    """The cleaned path and the size in bytes of a file about to be written, or ``VfsError``."""
    clean = check_path(path)
    if not isinstance(content, str):
        raise VfsError("The content must be text.")
    size = len(content.encode("utf-8"))
    if size > max_bytes:
        raise VfsError(
            f"Refused: {clean} would be {size} bytes; the limit is {max_bytes} bytes per file."
        )
    return clean, size
