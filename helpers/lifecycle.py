"""Run a notebook's clean-up when its kernel stops, however Jupyter stops it."""

from __future__ import annotations

import atexit
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from .paths import latest_run

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
