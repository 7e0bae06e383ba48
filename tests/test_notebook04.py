"""Notebooks 04 and 05 under papermill: SQLite with other values and the exercises,
and PostgreSQL through DATABASE_URL (given to the kernel's environment, never as a parameter)."""

from __future__ import annotations

import ast
import re

import pg_fixture
import psycopg
import pytest
from support import REPO_ROOT
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
NB04 = "04_session_state_in_the_database.ipynb"
NB05 = "05_routing_and_races.ipynb"
postgres_url = pg_fixture.postgres_url  # a throwaway PostgreSQL server, or a skip


def test_notebook_04_on_sqlite_with_other_values_and_the_solution(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with leaves_nothing(NB04):
        nb = execute(
            NB04,
            source=with_stream_check(with_solutions(NB04), NB04),
            tag="sqlite-",
            CODENAME="zephyr_42-X",
            COST_ROUNDS=2,
        )
    streamed(nb)
    text = outputs_text(nb)
    assert "SQLite file tmp/runs/04-" in text and "AURORA-7" not in text
    assert "User A's session: user-a-" in text
    assert re.search(r"two turns\n? *taken under the lease add 0: each follows", printed(nb))
    assert "/session-state/events.jsonl" in text and str(REPO_ROOT) not in text, "no local path"
    order = ast.literal_eval(line_after(printed(nb), "served in this order:"))
    assert sorted(order) == ["runtime-1", "runtime-2"], "exercise 1: both runtimes took a turn"
    assert "PostgreSQL" not in text.split("where the files are", 1)[1].split("clean_up", 1)[0]


def test_notebook_05_on_sqlite_with_other_values_and_the_solution(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with leaves_nothing(NB05):
        nb = execute(
            NB05,
            source=with_stream_check(with_solutions(NB05), NB05),
            tag="sqlite-",
            CODENAME="zephyr_42-X",
            USERS=3,
            TURNS=2,
            ROUTING="hash",
        )
    streamed(nb)
    text = outputs_text(nb)
    assert "SQLite file tmp/runs/05-" in text and "AURORA-7" not in text
    assert "User A's session: user-a-" in text and "6 turns in" in text
    assert "u2-session now holds: ['Remember: the pin is 4711.', 'What is the pin?']" in text
    assert "8 trials, mallory 0 to 28 ms after u2: 0 leaks" in text, "the fix, proved"
    assert "'forks': 0, 'lost': 0, 'doubled': 0, 'timeouts': 0, 'failed': 0" in text
    assert "first request: TimeoutError" in text and str(REPO_ROOT) not in text
    where = next(line for line in printed(nb).splitlines() if line.startswith("{'x-one'"))
    assert all(len(seen) == 1 for seen in ast.literal_eval(where).values()), "exercise 2"


def schemas_left(postgres_url: str, prefix: str) -> list[tuple]:
    with psycopg.connect(postgres_url) as conn:
        return conn.execute(
            "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE %s",
            (prefix + "%",),
        ).fetchall()


@pytest.mark.postgres
def test_notebooks_04_and_05_on_postgresql(
    monkeypatch: pytest.MonkeyPatch, postgres_url: str
) -> None:
    password = postgres_url.split(":")[2].split("@")[0]
    monkeypatch.setenv("DATABASE_URL", postgres_url)
    with leaves_nothing(NB04):
        nb = execute(NB04, tag="postgresql-", COST_ROUNDS=2)
    with leaves_nothing(NB05):
        nb05 = execute(NB05, tag="postgresql-", USERS=4, TURNS=3)
    for run in (nb, nb05):
        text = outputs_text(run)
        assert "session store: PostgreSQL postgresql://postgres:***@127.0.0.1:" in text
        assert password not in text, "the password must not reach the notebook"
        assert "DATABASE_URL" not in str(run.metadata.get("papermill", {}).get("parameters", {}))
    costs = outputs_text(nb).split("where the files are", 1)[1].split("clean_up", 1)[0]
    assert "SQLite" in costs and "PostgreSQL" in costs
    assert "12 turns in" in outputs_text(nb05)
    left = schemas_left(postgres_url, "run_04") + schemas_left(postgres_url, "run_05")
    assert left == [], f"clean-up should drop the runs' schemas: {left}"
