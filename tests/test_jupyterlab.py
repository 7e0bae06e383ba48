"""The notebooks as learners meet them: JupyterLab in a real browser (Chromium, Playwright).

Each notebook is opened in JupyterLab with its default settings (widget messages on a kernel
subshell, as JupyterLab 4.6 with ipykernel 7 does), run with Run All, checked, and its "Try it
yourself" panel is clicked like a learner would; then Run All again in the same kernel, and
Restart Kernel and Run All. The asserts read the DOM; screenshots go to ``tmp/screenshots/`` for a
human to look at.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from support import CHROMIUM, CHROMIUM_ARGS, REPO_ROOT, free_port, our_runtime_processes

from helpers.run import TMP, remove_dir

NOTEBOOKS = sorted(p.name for p in (REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SHOTS = TMP / "screenshots"
RUN_TIMEOUT_MS = 300_000
REPLY_TIMEOUT_MS = 90_000
# Notebooks without a "Try it yourself" panel: 08 drives a fleet of processes, 09 the operator's
# views; every other notebook ends with one.
NO_PANEL = ("08_", "09_")
# Run All again and Restart + Run All check that a second run replaces the first (its runtime
# stopped, not kept beside the new one). Each costs a whole run; the notebooks whose runs are the
# longest (03's timeouts and drains, 06's measurements, 08's fleet) are run once; the others
# check the rule.
RUN_ONCE = ("03_", "06_", "08_")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's Chromium at /usr/bin/chromium: apt-get install chromium",
    ),
]


class Lab:
    """A JupyterLab server of this repository's .venv, with settings of its own, on loopback."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.token = secrets.token_hex(16)
        settings = home / "settings" / "@jupyterlab" / "notebook-extension"
        settings.mkdir(parents=True)
        # Render every cell, so the DOM holds the whole notebook (the default virtualises).
        (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
        # No news pop-up over the screenshots, and no fetch of Jupyter's news feed.
        news = home / "settings" / "@jupyterlab" / "apputils-extension"
        news.mkdir(parents=True)
        (news / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
        env = dict(
            os.environ,
            JUPYTER_PATH=str(REPO_ROOT / ".venv" / "share" / "jupyter"),
            JUPYTER_CONFIG_DIR=str(home / "config"),
            JUPYTER_RUNTIME_DIR=str(home / "runtime"),
            JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
            JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
        )
        command = [
            str(REPO_ROOT / ".venv" / "bin" / "jupyter"),
            "lab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            f"--ServerApp.token={self.token}",
            f"--ServerApp.root_dir={REPO_ROOT}",
            "--LabApp.expose_app_in_browser=True",
        ]
        if os.geteuid() == 0:
            command.append("--allow-root")
        self.log = home / "jupyterlab.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._wait_ready()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}?token={self.token}"

    def _wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited: {self.log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(self.url("/api/status"), timeout=2).read()
                return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(
            f"JupyterLab did not answer in {timeout} s: {self.log.read_text()[-2000:]}"
        )

    def shutdown_kernel(self, kernel_id: str) -> None:
        """Shut one kernel down; its clean-up hook stops the notebook's runtime."""
        request = urllib.request.Request(self.url(f"/api/kernels/{kernel_id}"), method="DELETE")
        try:
            urllib.request.urlopen(request, timeout=30).read()
        except OSError:
            pass

    def stop(self) -> None:
        """Shut every kernel down through the API (so clean-up hooks run), then stop the server."""
        try:
            kernels = json.loads(
                urllib.request.urlopen(self.url("/api/kernels"), timeout=10).read()
            )
        except OSError:
            kernels = []
        for kernel in kernels:
            self.shutdown_kernel(kernel["id"])
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    home = remove_dir(TMP / "test-jupyterlab")
    home.mkdir(parents=True)
    running_before = set(our_runtime_processes())
    server = Lab(home)
    try:
        yield server
    finally:
        server.stop()
        deadline = time.monotonic() + 20
        while set(our_runtime_processes()) - running_before and time.monotonic() < deadline:
            time.sleep(0.5)
        left = set(our_runtime_processes()) - running_before
        assert not left, f"runtimes left running after JupyterLab stopped: {left}"


@pytest.fixture(scope="module")
def browser(lab: Lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(lab.home / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            yield context
        finally:
            context.close()


# Queries are scoped to the notebook on show: JupyterLab may keep other documents open in the DOM.
NODE = "window.jupyterapp.shell.currentWidget.node"
PROMPTS = f"[...{NODE}.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')]"


def shown(page):
    """The notebook panel on show (other open documents stay in the DOM, hidden)."""
    return page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")


def prompts(page) -> list[str]:
    return page.evaluate(f"{PROMPTS}.map(e => e.textContent.trim())")


def run_and_wait(page, command: str, first: int, count: int, accept_dialog: bool = False) -> None:
    """Run a notebook command; wait until the code cells show ``first`` .. ``first+count-1``."""
    # Not awaited in the page: restart-run-all resolves only after its dialog is answered.
    page.evaluate("command => { window.jupyterapp.commands.execute(command); }", command)
    if accept_dialog:
        page.locator(".jp-Dialog .jp-mod-accept").click(timeout=30_000)
    wanted = [f"[{n}]:" for n in range(first, first + count)]
    page.wait_for_function(
        f"wanted => JSON.stringify({PROMPTS}.map(e => e.textContent.trim())) === "
        "JSON.stringify(wanted)",
        arg=wanted,
        timeout=RUN_TIMEOUT_MS,
    )
    page.wait_for_function(
        "window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'",
        timeout=60_000,
    )


def check_run(page, name: str) -> dict[str, int]:
    """Every code cell ran, no error output, widgets rendered, the mermaid diagram drawn."""
    ran = prompts(page)
    errors = page.evaluate(
        f"[...{NODE}.querySelectorAll('.jp-OutputArea-output')]"
        ".filter(e => e.getAttribute('data-mime-type') === 'application/vnd.jupyter.stderr'"
        " || e.querySelector('.jp-RenderedText[data-mime-type=\"application/vnd.jupyter.error\"]'))"
        ".map(e => e.textContent.slice(0, 500))"
    )
    assert errors == [], f"{name}: error output after Run All: {errors}"
    buttons = shown(page).locator(".jupyter-widgets.widget-button").count()
    fallback = page.evaluate(
        f"[...{NODE}.querySelectorAll('.jp-OutputArea-output')]"
        '.filter(e => e.textContent.includes("open this notebook in JupyterLab")).length'
    )
    if not name.startswith(NO_PANEL):
        assert buttons >= 1 and fallback == 0, f"{name}: the panel should be a live widget"
    shown(page).locator(".jp-RenderedMermaid").first.scroll_into_view_if_needed(timeout=30_000)
    page.wait_for_function(
        f"{NODE}.querySelector('.jp-RenderedMermaid svg, .jp-RenderedMermaid img') !== null",
        timeout=30_000,
    )
    diagrams = shown(page).locator(".jp-RenderedMermaid svg, .jp-RenderedMermaid img").count()
    return {"code cells run": len(ran), "widgets": buttons, "diagrams": diagrams}


# Record every text the panel's live line shows (the reply while it streams). A mutation record
# keeps the nodes it added, so each update is seen, however fast the next one replaces it.
WATCH_LIVE = f"""() => {{
  const box = [...{NODE}.querySelectorAll('.widget-output')].pop().parentElement;
  window.__liveWatch?.disconnect();
  window.__live = [];
  window.__liveWatch = new MutationObserver(records => {{
    for (const record of records)
      for (const node of record.addedNodes) window.__live.push(node.textContent || '');
  }});
  window.__liveWatch.observe(box, {{childList: true, subtree: true}});
}}"""


def send(page, user: str, message: str) -> str:
    """Use the panel: pick ``user``, type ``message``, click Send; return that result's text."""
    panel_output = shown(page).locator(".widget-output").last
    before = panel_output.inner_text().count(" asked: ") + panel_output.inner_text().count(
        ": the request failed"
    )
    shown(page).locator(".widget-dropdown select").last.select_option(user)
    shown(page).locator(".widget-text input").last.fill(message)
    page.evaluate(WATCH_LIVE)
    shown(page).locator(".jupyter-widgets.widget-button", has_text="Send").last.click()
    page.wait_for_function(
        "([before]) => {"
        f" const t = [...{NODE}.querySelectorAll('.widget-output')].pop().innerText;"
        " return (t.split(' asked: ').length - 1) + (t.split(': the request failed').length - 1)"
        " > before; }",
        arg=[before],
        timeout=REPLY_TIMEOUT_MS,
    )
    partials = page.evaluate("() => { window.__liveWatch.disconnect(); return window.__live; }")
    text = panel_output.inner_text()
    last = re.split(r"(?m)^(?=User [AB](?: asked:|: the request failed))", text)[-1]
    assert "the request failed" not in last, f"the panel's request failed: {last}"
    assert last.startswith(f"User {user} asked: {message}"), f"newest result last: {text}"
    assert shown(page).locator(".widget-dropdown select").last.input_value() == user
    # The reply streamed: the live line showed it growing, piece by piece, up to the whole reply.
    growing = [p.split("\n  writing: ", 1)[1] for p in partials if "\n  writing: " in p]
    assert len(set(growing)) >= 2, f"the reply should grow in the live widget, saw: {partials}"
    assert all(b.startswith(a) for a, b in zip(growing, growing[1:], strict=False)), growing
    assert " ".join(growing[-1].split()) in " ".join(last.split()), (growing[-1], last)
    return last


def codename_of(name: str) -> str:
    nb = nbformat.read(REPO_ROOT / "notebooks" / name, as_version=4)
    source = next(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    return re.search(r'^CODENAME = "([^"]+)"', source, re.M).group(1)


def drive_panel(page, name: str) -> list[str]:
    """What the issue asks a learner to try, per notebook; returns the results seen."""
    if name.startswith(("01_", "07_")):  # 07: each user's own conversation, over HTTP
        codename = codename_of(name).lower()
        a = send(page, "A", "What is the codename?")
        assert codename in a.split("reply:", 1)[1].lower(), f"A's session knows it: {a}"
        b = send(page, "B", "What is the codename?")
        assert codename not in b.split("reply:", 1)[1].lower(), f"B's session must not: {b}"
        return [a, b]
    if name.startswith("02_"):
        a = send(page, "A", 'Create todo.md containing "buy milk"')
        assert re.search(r"User A's files: .*todo\.md", a), f"A's files should list todo.md: {a}"
        b = send(page, "B", "List my files.")
        assert "User B's files: none" in b, f"B should have no files: {b}"
        return [a, b]
    if name.startswith("03_"):
        codename = codename_of(name).lower()
        panel = shown(page)
        sessions = panel.locator(".widget-dropdown select").nth(-2)  # the panel: session, user
        a_id = next(
            o for o in sessions.locator("option").all_inner_texts() if o.startswith("user-a-")
        )
        sessions.select_option(a_id)
        a = send(page, "A", "What is the codename?")
        assert a_id in a and codename in a.split("reply:", 1)[1].lower(), f"A's own session: {a}"
        b_id = next(
            o for o in sessions.locator("option").all_inner_texts() if o.startswith("user-b-")
        )
        sessions.select_option(b_id)
        own = send(page, "B", "What is the codename?")  # B's own id: opened on first use
        assert b_id in own and codename not in own.split("reply:", 1)[1].lower(), own
        sessions.select_option(a_id)
        output = panel.locator(".widget-output").last
        refusals = output.inner_text().count("NotYourSession")
        panel.locator(".widget-dropdown select").last.select_option("B")
        panel.locator(".widget-text input").last.fill("What is the codename?")
        panel.locator(".jupyter-widgets.widget-button", has_text="Send").last.click()
        page.wait_for_function(
            f"([n]) => [...{NODE}.querySelectorAll('.widget-output')].pop().innerText"
            ".split('NotYourSession').length - 1 > n",
            arg=[refusals],
            timeout=REPLY_TIMEOUT_MS,
        )
        b = output.inner_text().rsplit("User B: the request failed", 1)[-1]
        assert "refused" in b and a_id in b, f"B must be refused A's session: {b}"
        assert codename not in b.lower(), f"the refusal must not leak A's conversation: {b}"
        return [a, b]
    if name.startswith(("04_", "05_")):
        codename = codename_of(name).lower()
        a = send(page, "A", "What is the codename?")
        assert codename in a.split("reply:", 1)[1].lower(), f"A's session knows it: {a}"
        held_a = re.search(r"runtime-[12]; the store holds (\d+) turn", a)
        assert held_a and int(held_a.group(1)) >= 2, f"the store should hold A's new turn: {a}"
        b = send(page, "B", "What is the codename?")
        assert codename not in b.split("reply:", 1)[1].lower(), f"B's session must not: {b}"
        held_b = re.search(r"the store holds (\d+) turn", b)
        assert held_b and int(held_b.group(1)) >= 1, f"the store should hold B's turn: {b}"
        return [a, b]
    if name.startswith("06_"):  # a prepared session per send, deleted after it
        a = send(page, "A", 'Create todo.md containing "buy milk"')
        assert "prepared ahead" in a, f"a prepared session answered: {a}"
        assert re.search(r"User A's files: .*todo\.md", a), f"A's files should list todo.md: {a}"
        return [a]
    return []


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_in_jupyterlab(lab: Lab, browser, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    stem = name.split("_")[0]
    committed = (REPO_ROOT / "notebooks" / name).read_bytes()
    count = sum(
        1
        for c in nbformat.read(REPO_ROOT / "notebooks" / name, as_version=4).cells
        if c.cell_type == "code"
    )
    page = browser.new_page()
    started, at_start = time.monotonic(), set(our_runtime_processes())
    try:
        # A workspace of its own, reset: only this notebook open, whatever ran before.
        page.goto(lab.url(f"/lab/workspaces/nb{stem}/tree/notebooks/{name}") + "&reset")
        page.wait_for_function(
            "window.jupyterapp?.shell.currentWidget?.sessionContext?.session?.kernel?.status"
            " === 'idle'",
            timeout=120_000,
        )
        run_and_wait(page, "notebook:run-all-cells", 1, count)
        figures = check_run(page, name)
        page.evaluate("window.jupyterapp.commands.execute('docmanager:save')")
        page.wait_for_function(
            "!window.jupyterapp.shell.currentWidget.context.model.dirty", timeout=30_000
        )
        on_disk = nbformat.read(REPO_ROOT / "notebooks" / name, as_version=4)
        assert not any(c.get("outputs") for c in on_disk.cells if c.cell_type == "code"), (
            "the save hook should keep outputs out of the file"
        )
        saved = (REPO_ROOT / "notebooks" / name).read_bytes()
        if saved != committed:
            (SHOTS / f"{stem}-as-saved.ipynb").write_bytes(saved)
        assert saved == committed, (
            f"saving an unchanged notebook should write it as committed: see {stem}-as-saved.ipynb"
        )
        seen = drive_panel(page, name)
        page.screenshot(path=str(SHOTS / f"{stem}-after-run-all.png"))
        if name.startswith(RUN_ONCE):
            print(f"{name}: {figures}, panel results seen {len(seen)}, run once")
            return
        before_rerun = len(our_runtime_processes())

        run_and_wait(page, "notebook:run-all-cells", count + 1, count)
        check_run(page, name)
        assert len(our_runtime_processes()) == before_rerun, (
            "Run All again should stop the earlier run's runtime, not keep both"
        )
        seen += drive_panel(page, name)

        run_and_wait(page, "notebook:restart-run-all", 1, count, accept_dialog=True)
        check_run(page, name)
        seen += drive_panel(page, name)
        page.screenshot(path=str(SHOTS / f"{stem}-after-restart-run-all.png"))
        print(
            f"{name}: {figures}, panel results seen {len(seen)}, "
            f"{time.monotonic() - started:.0f} s, screenshots in {SHOTS.relative_to(REPO_ROOT)}"
        )
    except Exception:
        page.screenshot(path=str(SHOTS / f"{stem}-failure.png"))
        raise
    finally:
        (REPO_ROOT / "notebooks" / name).write_bytes(committed)
        kernel = page.evaluate(
            "window.jupyterapp?.shell.currentWidget?.sessionContext?.session?.kernel?.id ?? null"
        )
        page.close()
        if kernel:
            lab.shutdown_kernel(kernel)
        if name.startswith(RUN_ONCE):  # the rule the reruns check, once: the kernel took all along
            deadline = time.monotonic() + 30
            while set(our_runtime_processes()) - at_start and time.monotonic() < deadline:
                time.sleep(0.5)
            left = set(our_runtime_processes()) - at_start
            assert not left, f"{name}: runtimes outlived the kernel: {left}"
