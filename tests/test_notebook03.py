"""Notebook 03 headless: other parameters with the exercises' solutions."""

from __future__ import annotations

import pytest
from test_notebooks import execute, leaves_nothing, outputs_text, with_solutions

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
        )
    text = outputs_text(nb)
    assert "ZEPHYR_42-X" in text and "AURORA-7" not in text
    assert "u3" in text and "u4 " not in text, "three users at once"
    assert "NotYourSession" in text and "refused" in text
    assert "deleted user-b-" in text, "exercise 1's solution ran"
