"""A run of a notebook: the repository's ``tmp/`` folder, a folder per run, and its clean-up when
the kernel stops."""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from helpers.errors import TmpNotWritable

REPO_ROOT = Path(__file__).resolve().parent.parent
TMP = REPO_ROOT / "tmp"
LOGS = TMP / "logs"
RUNS = TMP / "runs"


def remove_dir(path: Path) -> Path:
    """Delete the folder ``path`` (it must be inside ``tmp/``) if it exists; return its path."""
    path = Path(path).resolve()
    if TMP.resolve() not in path.parents:
        raise ValueError(f"refusing to remove {path}: only folders inside tmp/ are removed")
    shutil.rmtree(path, ignore_errors=True)
    return path


def run_dir(name: str) -> Path:
    """Create ``tmp/runs/<name>-<pid>-<random>/``, a folder only this run writes to.

    Two runs at once never share a folder. Earlier folders of the same name are removed first when
    their process is gone (a killed kernel) or is this one (Run All again in the same kernel); for
    this one, the earlier run's clean-up registered with ``at_kernel_exit`` runs first, so its
    runtime stops before its folder goes and nothing piles up.
    """
    writable_dir(RUNS)
    for old in RUNS.glob(f"{name}-*-*"):
        pid = old.name.removeprefix(f"{name}-").split("-")[0]
        if pid.isdigit() and int(pid) == os.getpid():
            finish_run(old)  # the earlier run's clean-up: stops its runtime before its folder goes
            shutil.rmtree(old, ignore_errors=True)
        elif pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    folder = RUNS / f"{name}-{os.getpid()}-{secrets.token_hex(3)}"
    writable_dir(folder)
    _LATEST_RUN[:] = [folder]
    return folder


_LATEST_RUN: list[Path] = []


def latest_run() -> Path | None:
    """The folder ``run_dir`` made last in this process, if any."""
    return _LATEST_RUN[0] if _LATEST_RUN else None


def process_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (a zombie has exited: it writes nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return True


def relative(path: Path) -> str:
    """Show a path relative to the repository root when it is inside it."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def writable_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if needed; say what it is for when it cannot be written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{secrets.token_hex(3)}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise TmpNotWritable(
            f"Cannot write to {path} ({exc.strerror or exc}). The tutorial keeps everything a run "
            "writes (runtime logs, session state, executed notebooks) under the repository's tmp/ "
            "folder: make it writable (for example `chmod -R u+w tmp`), or work in a writable "
            "clone of the repository."
        ) from None
    return path


_BY_RUN: dict[Path, Callable[[], None]] = {}


def finish_run(folder: Path) -> None:
    """Run now the clean-up registered while ``folder`` was this process's latest run, if any."""
    clean_up = _BY_RUN.pop(Path(folder), None)
    if clean_up is not None:
        clean_up()


def at_kernel_exit(clean_up: Callable[[], None]) -> None:
    """Call ``clean_up`` once when this process ends: a normal exit, or SIGTERM.

    It also runs, earlier, when the same notebook starts a new run in this kernel (Run All again):
    the clean-up belongs to the folder ``run_dir`` made last, and the next ``run_dir`` of that name
    calls it before removing the folder, so one kernel never keeps two runs' runtimes.

    A kernel asked to shut down normally exits and runs ``atexit`` hooks. When it is slow to go,
    Jupyter sends SIGTERM half-way through its shutdown wait (2.5 s by default), and Python's
    default SIGTERM handling skips ``atexit``; so the hook also runs on SIGTERM, then the process
    ends as it would have. (SIGKILL cannot be caught: the runtime still dies with the kernel through
    its guard process, and the next run removes a dead run's folder.)
    """
    lock = threading.Lock()
    done = False

    def once() -> None:
        nonlocal done
        with lock:
            if done:
                return
            done = True
        clean_up()

    atexit.register(once)
    run = latest_run()
    if run is not None:
        _BY_RUN[run] = once
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: object) -> None:
        try:
            once()
        finally:
            if callable(previous):
                previous(signum, frame)
            else:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)
