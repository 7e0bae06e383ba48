"""One call to get the shared runtime for a notebook: start it, or attach to ``CLI_URL``."""

from __future__ import annotations

from pathlib import Path

from helpers.model.backends import Backend
from helpers.run import at_kernel_exit, relative
from helpers.runtime.binary import expected_runtime_version, runtime_version
from helpers.runtime.server import RuntimeServer, attach_server, start_server


def shared_server(backend: Backend, cli_url: str = "", home: Path | None = None) -> RuntimeServer:
    """Start the runtime for ``backend`` (or attach to ``cli_url``); say how, in a few lines.

    The runtime runs under a guard process that stops it with this kernel, logs to ``tmp/logs/``,
    and is stopped (with ``backend``'s stand-in model) when the kernel exits.

    Args:
        backend: The model backend; its settings go into the runtime's environment.
        cli_url: ``host:port`` of a runtime that is already running; then nothing is started.
        home: The runtime's ``COPILOT_HOME`` (default ``tmp/copilot-home``).

    Returns:
        The server, started (and guarded) or attached.
    """
    if cli_url:
        server = attach_server(cli_url)
        at_kernel_exit(backend.close)
        print(
            f"attached to the runtime at {server.url} (token: {'set' if server.token else 'none'})"
        )
        print(sdk_changes())
        return server
    server = start_server(backend, home=home)
    at_kernel_exit(server.stop, backend.close)
    installed, expected = runtime_version(), expected_runtime_version()
    ours = sorted(name for name in server._added_env)
    print(f"started: {' '.join([relative(Path(server.command[0])), *server.command[1:]])}")
    print(
        f"  with COPILOT_CONNECTION_TOKEN=*** COPILOT_HOME={relative(server.home or Path('.'))}"
        + (f" and the backend's {', '.join(ours)}" if ours else "")
    )
    print(
        f"listening on {server.url} after {server.startup_seconds:.2f} s; "
        f"log: {relative(server.log_path or Path('.'))}; it stops with this kernel"
    )
    print(sdk_changes())
    if expected and installed != expected:
        print(
            f"Warning: runtime {installed} is not the one this SDK was built for ({expected}); "
            "run `npm ci`."
        )
    return server


def versions() -> str:
    """One line: the SDK's version, the runtime's, and the runtime this SDK expects."""
    from importlib.metadata import version

    try:
        installed = runtime_version()
    except Exception as exc:  # a missing runtime should not hide the other versions
        installed = f"unavailable ({type(exc).__name__})"
    return (
        f"github-copilot-sdk {version('github-copilot-sdk')}, runtime @github/copilot {installed} "
        f"(this SDK expects {expected_runtime_version()})"
    )


def sdk_changes() -> str:
    """One line: what the helpers change in the SDK's behaviour in this process, and why.

    A reader who copies a notebook's cells without the helpers gets the SDK without these
    (helpers/runtime/transport.py and helpers/runtime/watchdog.py).
    """
    from helpers.runtime import transport, watchdog

    changes = []
    tcp = transport._state  # read only: the switches live in transport.py
    options = ["TCP_NODELAY"] * bool(tcp["nodelay"]) + ["TCP_QUICKACK"] * bool(tcp["quickack"])
    options += ["one write per message"] * bool(tcp.get("buffered"))
    if tcp["installed"] and options:
        changes.append(
            f"{', '.join(options)} on every client's socket (transport.install(); notebook 06 "
            "explains)"
        )
    if watchdog._state["installed"]:
        changes.append(
            "a turn fails at once when its runtime dies, and start() has a timeout (watchdog; "
            "the SDK alone waits out the turn's timeout)"
        )
    if not changes:
        return "The helpers change nothing in the SDK in this process."
    return "The helpers change the SDK here: " + "; ".join(changes) + "."
