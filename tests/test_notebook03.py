"""Notebook 03 headless: other parameters with the exercises' solutions, and bad parameters."""

from __future__ import annotations

import papermill
import pytest
from conftest import our_runtime_processes
from test_notebooks import execute, outputs_text, runs_of, with_solutions

pytestmark = pytest.mark.notebook
NB03 = "03_serving_many_users.ipynb"


def test_notebook_03_with_solutions_and_other_parameters() -> None:
    running_before = set(our_runtime_processes())
    runs_before = runs_of(NB03)
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
    assert "NotYourSession" in text and "refused" in text
    assert "files: A 5, B 5" in text
    assert "median latency ratio (prepared-ahead / naive)" in text
    assert "deleted user-b-" in text, "exercise 1's solution ran"
    assert "served 8, created" in text, "exercise 3's solution ran"
    assert runs_of(NB03) <= runs_before, "the run removes its own folder"
    assert set(our_runtime_processes()) <= running_before, "no runtime left running"


def test_notebook_03_bad_parameters_each_get_a_message() -> None:
    with pytest.raises(papermill.PapermillExecutionError) as failed:
        execute(
            NB03,
            tag="bad-",
            USERS_AT_ONCE=1,
            SPEED_REQUESTS="many",
            ORPHAN_AGE_S=-1,
            CODENAME="x",
            BACKEND="cloud",
        )
    message = str(failed.value)
    assert "ParameterError" in message
    for expected in [
        "USERS_AT_ONCE = 1 is out of range",
        "SPEED_REQUESTS = 'many' must be a number",
        "ORPHAN_AGE_S = -1 is out of range",
        "CODENAME = 'x' is not allowed",
        "BACKEND = 'cloud' is not one of",
    ]:
        assert expected in message, f"missing: {expected}"
