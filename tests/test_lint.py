"""The code and the notebooks pass ruff's checks and its formatter (settings in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support import REPO_ROOT

PLACES = ["helpers", "tests", "bench", "examples", "notebooks"]


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff_is_clean(command: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ruff", *command, *PLACES],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"ruff {' '.join(command)}:\n{done.stdout[-3000:]}{done.stderr}"
