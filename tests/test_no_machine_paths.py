"""No committed file names a path of the machine it was written on (a home folder, a work tree)."""

from __future__ import annotations

import re
import subprocess

from support import REPO_ROOT

MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|home|root|Users)/[\w.-]+")
TEXT = (".py", ".md", ".ipynb", ".sh", ".txt", ".toml", ".ini", ".json", ".html", ".yaml", ".yml")


def test_no_committed_file_names_a_machine_path() -> None:
    listed = subprocess.run(
        ["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=True
    ).stdout.split()
    found = []
    for name in listed:
        path = REPO_ROOT / name
        if name.endswith(TEXT) and path.is_file() and name != "package-lock.json":
            for match in MACHINE_PATH.finditer(path.read_text(errors="replace")):
                found.append(f"{name}: {match.group(0)}")
    assert not found, "paths of one machine: " + ", ".join(found)
