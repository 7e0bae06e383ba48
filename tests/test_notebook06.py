"""Notebook 06 headless: other parameters with the exercises' solutions (bad ones: test_params)."""

from __future__ import annotations

import math
import re

import pytest
from test_notebooks import (
    execute,
    leaves_nothing,
    line_after,
    outputs_text,
    printed,
    streamed,
    with_solutions,
    with_stream_check,
)

pytestmark = pytest.mark.notebook
NB06 = "06_making_it_fast.ipynb"


def test_notebook_05_with_solutions_and_other_parameters() -> None:
    with leaves_nothing(NB06):
        nb = execute(
            NB06,
            source=with_stream_check(with_solutions(NB06), NB06),
            tag="odd-",
            STEP_ROUNDS=2,
            SPEED_REQUESTS=4,
            AT_ONCE=4,
            ISOLATION_REQUESTS=10,
            PROMPT="What files do I have?",
        )
    streamed(nb)
    said = printed(nb)
    for name in ("median latency ratio (fastest / naive):", "p95 latency ratio (fastest / naive):"):
        ratio = float(line_after(said, name))
        assert math.isfinite(ratio) and ratio > 0, f"{name} a measured ratio, not a placeholder"
    assert re.search(
        r"^throughput ratio at 4 \(fastest / naive, same transport\): \d+\.\d\d$", said, re.M
    )
    assert re.search(
        r"^floor: one warm turn in a kept session, fixed transport: \d+ ms", said, re.M
    )
    assert "stall 1, our two writes" in said and "stall 2, the runtime's writes" in said
    assert re.search(r"^TCP_QUICKACK re-armed [1-9]\d* times for one ping's reply$", said, re.M)
    assert "files: A 5, B 5" in said, "every request's file in its own user's filesystem"
    assert "prepared ahead" in outputs_text(nb), "the panel answered through the pool"
    assert "fastest:" in said, "exercise 1's solution ran"
    pool = re.search(r"^served (\d+), created (\d+), deleted (\d+)$", said, re.M)
    assert pool, "exercise 2 printed no pool figures"
    served, created, deleted = map(int, pool.groups())
    assert served == 8 and created == deleted, "exercise 2: every pooled session is deleted"
    assert "each of the 8 files is in its own user's filesystem" in said, "exercise 2's files"
