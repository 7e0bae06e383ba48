"""verify.sh installs what each mode needs, once: requirements.txt for the notebooks,
requirements-dev.txt (which includes it) for the tests, again only when one of them changes."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

from support import REPO_ROOT

FAKE_PYTHON = """#!/bin/sh
echo "$*" >> "$(dirname "$0")/../calls.log"
exit 0
"""


def checkout(tmp_path: Path) -> Path:
    """A copy of verify.sh beside small requirement files, a runtime marked installed and a
    ``.venv`` whose python only records how it was called."""
    root = tmp_path / "clone"
    (root / "notebooks").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "verify.sh", root / "verify.sh")
    (root / "requirements.txt").write_text("notebook-package==1.0\n")
    (root / "requirements-dev.txt").write_text("-r requirements.txt\ntest-package==1.0\n")
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (root / "package-lock.json").write_text("{}\n")
    (root / "notebooks" / "01_a.ipynb").write_text("{}\n")
    runtime = root / "node_modules" / "@github" / "copilot"
    runtime.mkdir(parents=True)
    lock_hash = hashlib.sha256(b"{}\n").hexdigest()
    (root / "node_modules" / ".package-lock.sha256").write_text(lock_hash + "\n")
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return root


def installs(root: Path, *args: str) -> list[str]:
    """Run verify.sh with ``args``; return the requirement files pip was asked to install."""
    log = root / ".venv" / "calls.log"
    log.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    done = subprocess.run(
        ["bash", str(root / "verify.sh"), *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    calls = log.read_text().splitlines() if log.exists() else []
    return [c.split(" -r ", 1)[1] for c in calls if "pip install" in c and " -r " in c]


def test_each_mode_installs_its_file_once_and_again_only_after_a_change(tmp_path: Path) -> None:
    root = checkout(tmp_path)
    assert installs(root) == ["requirements.txt"], "a fresh clone: the notebooks' packages only"
    assert installs(root) == [], "nothing changed: nothing installed"
    assert installs(root, "--tests") == ["requirements-dev.txt"], "the tests need theirs"
    assert installs(root, "--tests") == []
    assert installs(root) == [], "the tests' install includes the notebooks' packages"
    (root / "requirements-dev.txt").write_text("-r requirements.txt\ntest-package==2.0\n")
    assert installs(root) == [], "a test-only change does not touch the notebooks' mode"
    assert installs(root, "--tests") == ["requirements-dev.txt"]
    (root / "requirements.txt").write_text("notebook-package==2.0\n")
    assert installs(root) == ["requirements.txt"]
    assert installs(root, "--tests") == ["requirements-dev.txt"], "its base changed"
    (root / "pyproject.toml").write_text("[project]\nname = 'y'\n")
    assert installs(root, "--tests") == ["requirements-dev.txt"]
    assert installs(root) == []


def test_the_notebooks_need_no_test_only_package() -> None:
    def names(path: Path) -> set[str]:
        lines = [line.strip() for line in path.read_text().splitlines()]
        return {re.split(r"[=\[<>]", x)[0].lower() for x in lines if x and x[0] not in "#-"}

    for_tests, for_notebooks = (
        names(REPO_ROOT / "requirements-dev.txt"),
        names(REPO_ROOT / "requirements.txt"),
    )
    assert {"pytest", "hypothesis", "ruff", "schemathesis"} <= for_tests
    assert not for_tests & for_notebooks, "each package in one file"
    assert "-r requirements.txt" in (REPO_ROOT / "requirements-dev.txt").read_text()
    assert "./verify.sh --tests" in (REPO_ROOT / ".ci" / "run").read_text()
