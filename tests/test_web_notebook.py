"""Notebook 07 under papermill with other parameters: it passes, leaves nothing running, prints no
token, and a bad parameter stops it before anything starts."""

from __future__ import annotations

import re

import papermill
import pg_fixture
import pytest
from support import our_runtime_processes
from test_notebooks import execute, leaves_nothing, runs_of, with_solutions

pytestmark = pytest.mark.notebook
NB06 = "07_a_web_backend.ipynb"
postgres_url = pg_fixture.postgres_url  # a throwaway PostgreSQL server, or a skip
# secrets.token_urlsafe(32), as the service issues: 43 URL-safe characters, letters and digits.
TOKEN_LIKE = re.compile(
    r"(?<![A-Za-z0-9_-])(?=[^\s]*[0-9])(?=[^\s]*[A-Za-z])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])"
)


def printed(nb) -> str:
    """What the cells printed or showed as text (not images)."""
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(str(p) for p in parts)


def test_notebook_06_with_other_parameters_and_the_solutions_prints_no_token() -> None:
    with leaves_nothing(NB06):
        nb = execute(
            NB06,
            source=with_solutions(NB06),
            tag="other-",
            TURNS_PER_USER=3,
        )
    text = printed(nb)
    assert "A's conversation is untouched" in text, "exercise 1's solution ran"
    assert "B's file reached B's ask, and only B's" in text, "exercise 2's solution ran"
    assert "too_many_turns" in text and "429" in text, "the limit was shown"
    assert "Bearer " not in text.replace("Bearer …", ""), "no authorization header is printed"
    assert not TOKEN_LIKE.findall(text), "nothing that looks like a token is printed"


def test_a_bad_parameter_stops_notebook_06_before_anything_starts() -> None:
    running, runs = set(our_runtime_processes()), runs_of(NB06)
    with pytest.raises(papermill.PapermillExecutionError) as failed:
        execute(NB06, tag="bad-", TURNS_PER_USER=1000)
    assert failed.value.ename == "ParameterError" and "TURNS_PER_USER = " in str(failed.value)
    assert runs_of(NB06) == runs and set(our_runtime_processes()) <= running


@pytest.mark.postgres
def test_notebook_06_on_postgresql(monkeypatch: pytest.MonkeyPatch, postgres_url: str) -> None:
    import psycopg

    password = postgres_url.split(":")[2].split("@")[0]
    monkeypatch.setenv("DATABASE_URL", postgres_url)
    with leaves_nothing(NB06):
        nb = execute(NB06, tag="postgresql-")
    text = printed(nb)
    assert "store: PostgreSQL postgresql://postgres:***@127.0.0.1:" in text
    assert password not in text, "the password must not reach the notebook"
    with psycopg.connect(postgres_url) as conn:
        left = conn.execute(
            "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'run_07%'"
        ).fetchall()
    assert left == [], f"clean-up should drop the run's schema: {left}"
