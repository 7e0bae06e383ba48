"""Finding, starting, stopping and guarding the runtime."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from helpers.errors import RuntimeNotFound, RuntimeStartError
from helpers.model.backends import Backend
from helpers.run import process_alive
from helpers.runtime import binary
from helpers.runtime.binary import expected_runtime_version, find_runtime, runtime_version
from helpers.runtime.logs import redact
from helpers.runtime.server import start_server


def fake_runtime(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "copilot"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return script


def test_sdk_and_runtime_versions_are_the_matched_pair() -> None:
    assert expected_runtime_version() == runtime_version(), (
        "run `npm ci`: the runtime does not match the SDK"
    )


def test_found_in_node_modules_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COPILOT_CLI_PATH", raising=False)
    assert str(find_runtime()).startswith(str(REPO_ROOT / "node_modules"))


def test_cli_path_that_is_not_executable_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("COPILOT_CLI_PATH", str(tmp_path / "nope"))
    with pytest.raises(RuntimeNotFound, match="COPILOT_CLI_PATH"):
        find_runtime()


def test_missing_runtime_names_the_three_ways(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("COPILOT_CLI_PATH", raising=False)
    monkeypatch.setattr(binary, "_node_modules_candidates", lambda: [tmp_path / "absent"])
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeNotFound) as info:
        find_runtime()
    assert all(way in str(info.value) for way in ("npm ci", "COPILOT_CLI_PATH", "PATH"))


def test_failed_start_quotes_the_log_tail(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(
        "COPILOT_CLI_PATH", str(fake_runtime(tmp_path, 'echo "boom: cannot bind"; exit 3'))
    )
    with pytest.raises(RuntimeStartError) as info:
        start_server(home=tmp_path / "home", timeout=10)
    assert "exit code 3" in str(info.value) and "boom: cannot bind" in str(info.value)


def test_silent_start_times_out_and_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    monkeypatch.setenv(
        "COPILOT_CLI_PATH", str(fake_runtime(tmp_path, f"echo $$ > {pid_file}; exec sleep 60"))
    )
    started = time.monotonic()
    with pytest.raises(RuntimeStartError, match="did not announce its port"):
        start_server(home=tmp_path / "home", timeout=1.5)
    assert time.monotonic() - started < 15
    assert not process_alive(int(pid_file.read_text()))


def test_start_server_takes_the_backend_and_redacts_its_secrets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every runtime started from a backend hides its key: notebook 04's second runtime did not."""
    key = "sk-canary-1234567890"
    body = 'echo "key=$COPILOT_PROVIDER_API_KEY"; echo "listening on port 4321"; exec sleep 30'
    monkeypatch.setenv("COPILOT_CLI_PATH", str(fake_runtime(tmp_path, body)))
    monkeypatch.setenv("GH_TOKEN", "inherited-token-value")
    backend = Backend(
        "byok",
        "m",
        server_env={"COPILOT_PROVIDER_API_KEY": key},
        server_remove_env=("GH_TOKEN",),
        secret_values=[key],
    )
    server = start_server(backend, home=tmp_path / "home", timeout=10)
    try:
        assert server.url == "127.0.0.1:4321"
        assert key in server.log_path.read_text(), "the runtime got the backend's key"
        shown = server.log_tail() + server.describe()
        assert key not in shown and "key=***" in shown, "and nothing we show holds it"
        assert "GH_TOKEN" not in server._env, "what the backend removes is not inherited"
    finally:
        server.stop()


@pytest.mark.runtime
def test_offline_without_a_provider_refuses_to_start(tmp_path: Path) -> None:
    """Runtime notes: offline mode demands COPILOT_PROVIDER_BASE_URL and COPILOT_MODEL."""
    with pytest.raises(RuntimeStartError) as info:
        offline = Backend(
            "offline",
            None,
            server_env={"COPILOT_OFFLINE": "true"},
            server_remove_env=("COPILOT_PROVIDER_BASE_URL", "COPILOT_MODEL"),
        )
        start_server(offline, home=tmp_path / "home", timeout=20)
    assert "Offline mode requires a local model provider" in str(info.value)


@pytest.mark.runtime
def test_start_stop_and_log(local_backend) -> None:
    server = start_server(local_backend)
    try:
        assert server.url.startswith("127.0.0.1:") and process_alive(server.pid)
        assert server.token and server.token not in server.log_tail(200)
        assert "listening on port" in server.log_tail()
    finally:
        server.stop()
    assert not process_alive(server.pid)
    server.stop()  # a second stop is harmless


def test_redact() -> None:
    assert redact("token=abcd1234 ok", ["abcd1234"]) == "token=*** ok"


ORPHAN_SCRIPT = textwrap.dedent("""
    import sys, time
    from helpers.model.backends import choose_backend
    from helpers.runtime.server import start_server
    backend = choose_backend("local", env={})
    server = start_server(backend)
    print(server.pid, flush=True)
    time.sleep(600)
""")


def gone_within(pid: int, seconds: float) -> bool:
    """Poll until ``pid`` has exited; True if it did within ``seconds``."""
    deadline = time.monotonic() + seconds
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not process_alive(pid)


def _read_line(stream, timeout: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, "the child did not report in time"
    return stream.readline().decode().strip()


@pytest.mark.runtime
def test_server_dies_within_5s_when_its_python_parent_is_killed() -> None:
    parent = subprocess.Popen([sys.executable, "-c", ORPHAN_SCRIPT], stdout=subprocess.PIPE)
    try:
        server_pid = int(_read_line(parent.stdout, 60))
        assert process_alive(server_pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        assert gone_within(server_pid, 5.0), "the runtime outlived the process that started it"
    finally:
        parent.kill()


@pytest.mark.runtime
def test_server_dies_when_a_jupyter_kernel_is_killed() -> None:
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name="python3")
    outputs: list[dict] = []
    try:
        code = ORPHAN_SCRIPT.replace("time.sleep(600)", "")
        reply = client.execute_interactive(code, timeout=60, output_hook=outputs.append)
        assert reply["content"]["status"] == "ok"
        server_pid = int(
            "".join(
                m["content"].get("text", "") for m in outputs if m["msg_type"] == "stream"
            ).strip()
        )
        assert process_alive(server_pid)
        os.kill(manager.provisioner.process.pid, signal.SIGKILL)
        assert gone_within(server_pid, 5.0), "the runtime outlived its killed kernel"
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
