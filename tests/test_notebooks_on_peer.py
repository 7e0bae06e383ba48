"""Every notebook, with its exercises' solutions, headless on the peer model (tests/peer_model.py).

A notebook that passes only on the stand-in it ships with is broken: this runs each
``notebooks/[0-9][0-9]_*.ipynb`` through the ``byok`` backend against a model that answers at
once, in other words, and calls tools its own way.
"""

from __future__ import annotations

from collections.abc import Iterator

import nbformat
import pytest
from conftest import REPO_ROOT
from peer_model import PEER_MODEL, PeerModel
from test_notebooks import NOTEBOOKS, execute, leaves_nothing, outputs_text, with_solutions

pytestmark = pytest.mark.notebook
# What each notebook must show on any model: its demonstrations ran, not only their skip lines.
SHOWN = {
    "01": ["User A's session says", "restored session says"],
    "02": ["tool results the model saw", "burst: one request alone"],
    "03": [
        "gave up after",
        "a request was in flight when the drain began: True",
    ],
    "04": ["taken under the lease add 0", "served in this order:"],
    "05": ["every one of the", "{'x-one'"],
    "06": ["each of the 8 files is in its own user's filesystem"],
    "07": ["A's conversation is untouched", "B's file reached B's ask, and only B's"],
    "08": [
        "with a key: the retry answered; the question is stored 1 time(s)",
        "the stream ended with 'aborted'",
        "0 during the deploy",
    ],
    "09": [
        "no span of one user's request is in another's trace; each X-Trace-Id names its own",
        "colour codes or tokens in them: 0",
        "token: 404 not_found",
        "the read-only write was denied before it ran",
        "B cannot tell the two apart",
        "the plan denied B the write before it ran",
    ],
}
ALL = sorted(p.name for p in (REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture(scope="module")
def peer() -> Iterator[PeerModel]:
    with PeerModel() as model:
        yield model


def has_solutions(name: str) -> bool:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    return any(c.cell_type == "markdown" and "<details>" in c.source for c in nb.cells)


def test_every_numbered_notebook_is_picked_up() -> None:
    assert {"01", "02", "03", "04", "05", "06", "07", "08"} <= {name[:2] for name in ALL}


@pytest.mark.parametrize("name", ALL)
def test_notebook_runs_on_the_peer_model(
    name: str, peer: PeerModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var, value in peer.env().items():
        monkeypatch.setenv(var, value)
    before = peer.answered
    source = with_solutions(name) if has_solutions(name) else None
    with leaves_nothing(name):
        nb = execute(name, source=source, tag="peer-")
    text = outputs_text(nb)
    assert f"backend=byok model={PEER_MODEL}" in text, "the run used the peer model"
    assert peer.answered > before, "the model requests went to the peer"
    for shown in SHOWN.get(name[:2], []):
        assert shown in text, f"{name} on the peer model did not show: {shown}"
