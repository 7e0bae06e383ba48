"""Notebook 03 headless: other parameters with the exercises' solutions."""

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
    with_solutions,
)

pytestmark = pytest.mark.notebook
NB03 = "03_serving_many_users.ipynb"


def test_notebook_03_with_solutions_and_other_parameters() -> None:
    with leaves_nothing(NB03):
        nb = execute(
            NB03,
            source=with_solutions(NB03),
            tag="odd-",
            CODENAME="ZEPHYR_42-X",
            USERS_AT_ONCE=3,
            SLOW_TURN_S=1,
            ORPHAN_AGE_S=0.5,
            SPEED_REQUESTS=2,
            ISOLATION_REQUESTS=10,
        )
    text = outputs_text(nb)
    assert "ZEPHYR_42-X" in text and "AURORA-7" not in text
    assert "u3" in text and "u4 " not in text, "three users at once"
    said = printed(nb)
    assert re.search(
        r"^refused: session 'user-a-[0-9a-f]{16}' is not one of User B's sessions: refused, "
        r"nothing was read, changed or deleted$",
        said,
        re.M,
    ), "B's resume of A's id is refused by the registry"
    assert "files: A 5, B 5" in text
    ratio = float(line_after(said, "median latency ratio (prepared-ahead / naive):"))
    assert math.isfinite(ratio) and ratio > 0, "a measured ratio, not a placeholder"
    assert re.search(r"^deleted user-b-[0-9a-f]{16}$", said, re.M), "exercise 1 deleted B's id"
    pool = re.search(r"^served (\d+), created (\d+), deleted (\d+)$", said, re.M)
    assert pool, "exercise 3 printed no pool figures"
    served, created, deleted = map(int, pool.groups())
    assert served == 8 and created == deleted, "exercise 3: every pooled session is deleted"
    assert "each of the 8 files is in its own user's filesystem" in said, "exercise 3's files"
    assert "and a_id: " in said, "exercise 1: B cannot delete A's session"
    assert "gave up after" in said and "the turn went on" in said, "the slow tool outlived the wait"
    assert "a request was in flight when the drain began: True" in said, "the drain waited"
