"""Finding the Copilot runtime's binary, and the version it reports against the SDK's."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from helpers.errors import RuntimeNotFound
from helpers.run import REPO_ROOT


def find_runtime() -> Path:
    """Locate the runtime: ``COPILOT_CLI_PATH``, then ``node_modules``, then ``copilot`` on PATH.

    Returns:
        The path of an executable Copilot runtime.

    Raises:
        RuntimeNotFound: naming the three ways to provide one.
    """
    explicit = os.environ.get("COPILOT_CLI_PATH")
    if explicit:
        path = Path(explicit).expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise RuntimeNotFound(
            f"COPILOT_CLI_PATH is set to {explicit!r}, which is not an executable file."
        )
    for candidate in _node_modules_candidates():
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which("copilot")
    if on_path:
        return Path(on_path)
    raise RuntimeNotFound(
        "No Copilot runtime found. Run `npm ci` in the repository root "
        "(./verify.sh does it for you), "
        "or set COPILOT_CLI_PATH to a `copilot` binary, or put `copilot` on your PATH."
    )


def _node_modules_candidates() -> list[Path]:
    """The native binary npm installs for this platform, then npm's own launcher."""
    from copilot._cli_version import get_cli_binary_name, get_runtime_platform

    base = REPO_ROOT / "node_modules" / "@github"
    found = []
    try:
        found.append(base / f"copilot-{get_runtime_platform()}" / get_cli_binary_name())
    except RuntimeError:
        pass
    found.append(REPO_ROOT / "node_modules" / ".bin" / "copilot")
    return found


def runtime_version(path: Path | None = None, timeout: float = 30.0) -> str:
    """Return the version the runtime reports with ``--version`` (e.g. ``"1.0.102"``)."""
    path = path or find_runtime()
    out = subprocess.run(
        [str(path), "--version"], capture_output=True, text=True, timeout=timeout, check=False
    )
    match = re.search(r"(\d+\.\d+\.\d+(?:-[\w.]+)?)", out.stdout + out.stderr)
    if not match:
        raise RuntimeError(
            f"could not read a version from `{path} --version`: {out.stdout or out.stderr!r}"
        )
    return match.group(1)


def expected_runtime_version() -> str | None:
    """The runtime version this SDK release was built against."""
    from copilot._cli_version import CLI_VERSION

    return CLI_VERSION
