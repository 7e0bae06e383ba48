"""A file's content as parts: an append adds one row of its own bytes, the history is not rewritten.

On SQLite and PostgreSQL: appends read back in order, a write replaces every part, a move and a
remove take the parts along, sizes are UTF-8 bytes, and PostgreSQL keeps NUL characters.
"""

from __future__ import annotations

import pg_fixture
import pytest

from helpers.store import open_store

postgres_url = pg_fixture.postgres_url
EVENTS = "/session-state/events.jsonl"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def store(request, tmp_path):
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else ""
    opened = await open_store(tmp_path, url, schema="parts_test" if url else "")
    yield opened
    if opened.engine == "postgresql":
        opened.drop_schema()  # type: ignore[attr-defined]
    await opened.close()


async def parts(store, path: str) -> list[tuple[int, str]]:
    rows, _ = await store.execute(
        "SELECT seq, content FROM session_file_parts "
        "WHERE session_id = ? AND path = ? ORDER BY seq",
        ("s", path),
    )
    return [(seq, store.decode(content)) for seq, content in rows]


async def test_an_append_adds_one_part_and_leaves_the_history_alone(store) -> None:
    await store.write("s", EVENTS, '{"turn": 0}\n', "file")
    for turn in range(1, 6):
        before = await parts(store, EVENTS)
        await store.append("s", EVENTS, f'{{"turn": {turn}}}\n')
        after = await parts(store, EVENTS)
        assert after[:-1] == before, "earlier parts are not rewritten"
        assert after[-1] == (turn + 1, f'{{"turn": {turn}}}\n'), (
            "one new part with only the new bytes"
        )
    row = await store.read("s", EVENTS)
    assert row is not None and row.content == "".join(f'{{"turn": {t}}}\n' for t in range(6))
    assert await store.size("s", EVENTS) == len(row.content.encode())


async def test_write_move_and_remove_carry_the_parts(store) -> None:
    await store.append("s", "/a/f", "é1")
    await store.append("s", "/a/f", "\x00-2")
    assert (await store.read("s", "/a/f")).content == "é1\x00-2", "NUL kept on every engine"
    assert await store.size("s", "/a/f") == len("é1\x00-2".encode())
    await store.move("s", "/a", "/b")
    assert await store.read("s", "/a/f") is None and await parts(store, "/a/f") == []
    assert (await store.read("s", "/b/f")).content == "é1\x00-2"
    await store.write("s", "/b/f", "new", "file")
    assert await parts(store, "/b/f") == [(1, "new")], "a write replaces every part"
    await store.remove("s", "/b", recursive=True)
    assert await store.read("s", "/b/f") is None and await parts(store, "/b/f") == []
