"""Notebook 05 headless: other parameters with the exercises' solutions (bad ones: test_params)."""

from __future__ import annotations

import re

import pytest
from test_notebooks import execute, leaves_nothing, outputs_text, with_solutions

pytestmark = pytest.mark.notebook
NB05 = "05_making_it_fast.ipynb"
LINES = (
    r"median latency ratio \(fastest / naive\): \d+\.\d\d",
    r"p95 latency ratio \(fastest / naive\): \d+\.\d\d",
    r"throughput ratio at 4 \(fastest / naive, same transport\): \d+\.\d\d",
)


def test_notebook_05_with_solutions_and_other_parameters() -> None:
    with leaves_nothing(NB05):
        nb = execute(
            NB05,
            source=with_solutions(NB05),
            tag="odd-",
            STEP_ROUNDS=2,
            SPEED_REQUESTS=4,
            AT_ONCE=4,
            ISOLATION_REQUESTS=10,
            PROMPT="What files do I have?",
        )
    text = outputs_text(nb)
    for line in LINES:
        assert re.search(line, text), f"missing: {line}"
    assert "stall 1, our two writes" in text and "stall 2, the runtime's writes" in text
    assert "files: A 5, B 5" in text, "every request's file in its own user's filesystem"
    assert "prepared ahead" in text, "the panel answered through the pool"
    assert "fastest:" in text, "exercise 1's solution ran"
    assert "served 8, created" in text, "exercise 2's solution ran"
