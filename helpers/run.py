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


def run_dir(name: str, keep: bool = False) -> Path:
    """Create ``tmp/runs/<name>-<pid>-<random>/``, a folder only this run writes to.

    Its clean-up is registered at once: when this process ends (a normal exit, SIGTERM, or a
    headless run that failed part-way) the clean-ups given to :func:`at_kernel_exit` run, newest
    first, then the folder is removed unless ``keep`` (a notebook's ``KEEP_STATE``).

    Two runs at once never share a folder. Earlier folders of the same name are removed first when
    their process is gone (a killed kernel) or is this one (Run All again in the same kernel); for
    this one, the earlier run's clean-up runs first, so its runtime stops before its folder goes
    and nothing piles up.
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
    _RUNS[folder] = _Run(folder, keep)
    _install_exit_hooks()
    return folder


class _Run:
    """One run folder's clean-up: the steps registered for it, newest first, then the folder."""

    def __init__(self, folder: Path | None, keep: bool) -> None:
        self.folder, self.keep = folder, keep
        self.steps: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._done = False

    def finish(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        for step in self.steps:
            try:
                step()
            except Exception as exc:  # one failing step must not keep the rest from running
                name = getattr(step, "__qualname__", repr(step))
                print(f"clean-up: {name} failed ({type(exc).__name__}: {exc}); going on")
        if self.folder is not None and not self.keep:
            shutil.rmtree(self.folder, ignore_errors=True)


_RUNS: dict[Path | None, _Run] = {}


def latest_run() -> Path | None:
    """The folder ``run_dir`` made last in this process and not yet cleaned up, if any."""
    folders = [folder for folder in _RUNS if folder is not None]
    return folders[-1] if folders else None


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


def finish_run(folder: Path | None) -> None:
    """Clean up the run of ``folder`` now (its steps, then its folder unless kept); once only."""
    run = _RUNS.pop(None if folder is None else Path(folder), None)
    if run is not None:
        run.finish()


def at_kernel_exit(*clean_ups: Callable[[], None]) -> None:
    """Call ``clean_ups``, in this order, once when this process ends: a normal exit, or SIGTERM.

    They belong to the folder ``run_dir`` made last: they run before that folder is removed, and
    before the clean-ups registered earlier for it (the newest resource goes first). They also run
    earlier, when the same notebook starts a new run in this kernel (Run All again), or when the
    notebook calls ``finish_run``: one kernel never keeps two runs' runtimes.

    A kernel asked to shut down normally exits and runs ``atexit`` hooks. When it is slow to go,
    Jupyter sends SIGTERM half-way through its shutdown wait (2.5 s by default), and Python's
    default SIGTERM handling skips ``atexit``; so the hook also runs on SIGTERM, then the process
    ends as it would have. (SIGKILL cannot be caught: the runtime still dies with the kernel through
    its guard process, and the next run removes a dead run's folder.)
    """
    folder = latest_run()
    run = _RUNS.setdefault(folder, _Run(folder, keep=True))
    run.steps[:0] = clean_ups
    _install_exit_hooks()


def _finish_all() -> None:
    for folder in reversed(list(_RUNS)):
        finish_run(folder)


_HOOKS: set[str] = set()


def _install_exit_hooks() -> None:
    """Once per process: run every pending clean-up at exit, and on SIGTERM (from the main thread:
    Python lets only the main thread set a signal handler)."""
    if "atexit" not in _HOOKS:
        _HOOKS.add("atexit")
        atexit.register(_finish_all)
    if "sigterm" in _HOOKS or threading.current_thread() is not threading.main_thread():
        return
    _HOOKS.add("sigterm")
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: object) -> None:
        try:
            _finish_all()
        finally:
            if callable(previous):
                previous(signum, frame)
            else:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)
