"""Run one command and make sure it dies with the Python process that started us.

Usage: python guard.py LOG_FILE -- COMMAND [ARGS...]

The parent keeps the write end of our stdin. When the parent exits for any
reason (including ``kill -9``), our stdin reaches end-of-file and we stop the
command's whole process group. On Linux the command also gets
``PR_SET_PDEATHSIG`` so that it dies if this guard itself is killed.
The command's pid is written to stdout as one line, then stdout is closed.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys

GRACE_SECONDS = 5.0


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this child when its parent (the guard) dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def _stop(child: subprocess.Popen[bytes]) -> int:
    """Terminate the child's process group, escalating to SIGKILL after a grace period."""
    if child.poll() is not None:
        return child.returncode
    for sig, wait in ((signal.SIGTERM, GRACE_SECONDS), (signal.SIGKILL, GRACE_SECONDS)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            break
        try:
            return child.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    return child.wait()


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: guard.py LOG_FILE -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    log_path, command = argv[0], argv[2:]
    with open(log_path, "ab", buffering=0) as log:
        child = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    sys.stdout.write(f"{child.pid}\n")
    sys.stdout.flush()
    sys.stdout.close()

    stopping = False

    def _on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    stdin = sys.stdin.buffer
    while not stopping:
        if child.poll() is not None:
            return child.returncode
        try:
            ready, _, _ = select.select([stdin], [], [], 0.25)
        except InterruptedError:
            continue
        if ready and not os.read(stdin.fileno(), 1024):
            break  # parent gone (or asked us to stop by closing the pipe)
    return _stop(child)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
