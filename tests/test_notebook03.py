"""Notebook 03 headless: other parameters with the exercises' solutions."""

from __future__ import annotations

import re

import pytest
from test_notebooks import (
    execute,
    leaves_nothing,
    outputs_text,
    printed,
    streamed,
    with_solutions,
    with_stream_check,
    within_an_hour,
)

pytestmark = pytest.mark.notebook
NB03 = "03_serving_many_users.ipynb"


def test_notebook_03_with_solutions_and_other_parameters() -> None:
    with leaves_nothing(NB03):
        nb = execute(
            NB03,
            source=with_stream_check(with_solutions(NB03), NB03),
            tag="odd-",
            CODENAME="ZEPHYR_42-X",
            USERS_AT_ONCE=3,
            SLOW_TURN_S=1,
            ORPHAN_AGE_S=0.5,
        )
    streamed(nb)
    within_an_hour(nb)
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
    assert re.search(r"^deleted user-b-[0-9a-f]{16}$", said, re.M), "exercise 1 deleted B's id"
    assert "and a_id: " in said, "exercise 1: B cannot delete A's session"
    assert "gave up after" in said and "the turn went on" in said, "the slow tool outlived the wait"
    assert "a request was in flight when the drain began: True" in said, "the drain waited"
