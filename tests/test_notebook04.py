"""Notebook 04 under papermill: SQLite with other values and the exercises,
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
NB04 = "04_beyond_one_runtime.ipynb"
postgres_url = pg_fixture.postgres_url  # a throwaway PostgreSQL server, or a skip


def test_notebook_04_on_sqlite_with_other_values_and_the_solutions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with leaves_nothing(NB04):
        nb = execute(
            NB04,
            source=with_stream_check(with_solutions(NB04), NB04),
            tag="sqlite-",
            CODENAME="zephyr_42-X",
            USERS=3,
            TURNS=2,
            ROUTING="hash",
            COST_ROUNDS=2,
        )
    streamed(nb)
    text = outputs_text(nb)
    assert "SQLite file tmp/runs/04-" in text and "AURORA-7" not in text
    assert "User A's session: user-a-" in text and "6 turns in" in text
    assert "u2-session now holds: ['Remember: the pin is 4711.', 'What is the pin?']" in text
    assert "8 trials, mallory 0 to 28 ms after u2: 0 leaks" in text, "the fix, proved"
    assert "'forks': 0, 'lost': 0, 'doubled': 0, 'timeouts': 0, 'failed': 0" in text
    assert "first request: TimeoutError" in text
    assert re.search(r"two turns\n? *taken under the lease add 0: each follows", printed(nb))
    assert "/session-state/events.jsonl" in text and str(REPO_ROOT) not in text, "no local path"
    said = printed(nb)
    order = ast.literal_eval(line_after(said, "served in this order:"))
    assert sorted(order) == ["runtime-1", "runtime-2"], "exercise 1: both runtimes took a turn"
    where = next(line for line in said.splitlines() if line.startswith("{'x-one'"))
    assert all(len(seen) == 1 for seen in ast.literal_eval(where).values()), "exercise 2"
    assert "PostgreSQL" not in text.split("where the files are", 1)[1].split("clean_up", 1)[0]


@pytest.mark.postgres
def test_notebook_04_on_postgresql(monkeypatch: pytest.MonkeyPatch, postgres_url: str) -> None:
    password = postgres_url.split(":")[2].split("@")[0]
    monkeypatch.setenv("DATABASE_URL", postgres_url)
    with leaves_nothing(NB04):
        nb = execute(NB04, tag="postgresql-", USERS=4, TURNS=3, COST_ROUNDS=2)
    text = outputs_text(nb)
    assert "session store: PostgreSQL postgresql://postgres:***@127.0.0.1:" in text
    assert password not in text, "the password must not reach the notebook"
    assert "DATABASE_URL" not in str(nb.metadata.get("papermill", {}).get("parameters", {}))
    costs = text.split("where the files are", 1)[1].split("clean_up", 1)[0]
    assert "SQLite" in costs and "PostgreSQL" in costs
    with psycopg.connect(postgres_url) as conn:
        left = conn.execute(
            "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'run_04%'"
        ).fetchall()
    assert left == [], f"clean-up should drop the run's schema: {left}"
