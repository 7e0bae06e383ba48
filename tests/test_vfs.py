"""The per-user virtual filesystem: refusals change nothing, concurrent writes lose nothing."""

from __future__ import annotations

import threading

import pytest

from helpers.errors import VfsError
from helpers.tools.vfs import VirtualFS


@pytest.fixture
def fs() -> VirtualFS:
    fs = VirtualFS("A", max_file_bytes=100, max_files=3)
    fs.write("notes.md", "hello")
    return fs


BAD_PATHS = [
    "../escape.md",
    "a/../../b.md",
    "..",
    "/etc/passwd",
    "/notes.md",
    "C:/x.txt",
    "docs\\a.md",
    "",
    "   ",
    "a\x00b.md",
    "a//b.md",
    "./",
    "a/./b.md",
    "docs/",
    "tab\there.md",
    "x" * 300,
    None,
    42,
]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_bad_paths_are_refused_for_write_and_read_and_nothing_changes(fs: VirtualFS, path) -> None:
    before = fs.snapshot()
    with pytest.raises(VfsError, match="Refused"):
        fs.write(path, "data")
    with pytest.raises(VfsError, match="Refused"):
        fs.read(path)
    assert fs.snapshot() == before


def test_a_leading_dot_slash_names_the_same_file(fs: VirtualFS) -> None:
    assert fs.read("./notes.md") == "hello"
    fs.write("././todo.md", "milk")
    assert fs.list() == ["notes.md", "todo.md"]


def test_file_over_the_size_limit_is_refused(fs: VirtualFS) -> None:
    before = fs.snapshot()
    with pytest.raises(VfsError, match="limit is 100 bytes"):
        fs.write("big.txt", "é" * 51)  # 102 bytes in UTF-8
    with pytest.raises(VfsError, match="limit"):
        fs.write("notes.md", "x" * 101)  # an overwrite too
    assert fs.snapshot() == before


def test_too_many_files_is_refused_but_overwrite_is_allowed(fs: VirtualFS) -> None:
    fs.write("b.md", "b")
    fs.write("c.md", "c")
    before = fs.snapshot()
    with pytest.raises(VfsError, match="3 files"):
        fs.write("d.md", "d")
    assert fs.snapshot() == before
    assert fs.write("c.md", "C") == "Replaced c.md (1 bytes)."
    assert fs.read("c.md") == "C"


def test_missing_file_is_a_clear_error(fs: VirtualFS) -> None:
    before = fs.snapshot()
    with pytest.raises(VfsError, match="No file named missing.md"):
        fs.read("missing.md")
    assert fs.snapshot() == before


def test_non_text_content_is_refused(fs: VirtualFS) -> None:
    before = fs.snapshot()
    with pytest.raises(VfsError, match="text"):
        fs.write("n.md", b"bytes")  # type: ignore[arg-type]
    assert fs.snapshot() == before


def test_good_paths_and_listing(fs: VirtualFS) -> None:
    assert fs.write("docs/plan v2.md", "x") == "Created docs/plan v2.md (1 bytes)."
    assert fs.list() == ["docs/plan v2.md", "notes.md"]
    assert fs.read("notes.md") == "hello"


def test_users_do_not_share_files() -> None:
    a, b = VirtualFS("A"), VirtualFS("B")
    a.write("notes.md", "secret")
    assert b.list() == [] and a.list() == ["notes.md"]


def test_concurrent_writers_lose_nothing() -> None:
    fs = VirtualFS("A", max_files=1000)
    barrier = threading.Barrier(8)

    def writer(worker: int) -> None:
        barrier.wait()
        for index in range(50):
            fs.write(f"w{worker}/f{index}.txt", f"{worker}-{index}")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(fs.list()) == 400
    assert all(fs.read(f"w{w}/f{i}.txt") == f"{w}-{i}" for w in range(8) for i in range(50))


def test_view_is_read_only(fs: VirtualFS) -> None:
    with pytest.raises(TypeError):
        fs.files["x.md"] = "nope"  # type: ignore[index]


def test_nfc_and_nfd_names_are_one_file() -> None:
    fs = VirtualFS("A")
    nfc, nfd = "caf\u00e9.md", "cafe\u0301.md"
    assert nfc != nfd
    fs.write(nfc, "one")
    fs.write(nfd, "two")
    assert fs.list() == [nfc], "the two spellings of é must name one file"
    assert fs.read(nfd) == "two"


@pytest.mark.parametrize(
    ("char", "what"),
    [
        ("\x7f", "U\\+007F"),
        ("\x85", "U\\+0085"),
        ("\x9b", "U\\+009B"),
        ("\u202e", "RIGHT-TO-LEFT OVERRIDE"),
        ("\u2067", "RIGHT-TO-LEFT ISOLATE"),
        ("\u200b", "ZERO WIDTH SPACE"),
        ("\u200d", "ZERO WIDTH JOINER"),
        ("\u2060", "WORD JOINER"),
        ("\ufeff", "ZERO WIDTH NO-BREAK SPACE"),
        ("\u2028", "LINE SEPARATOR"),
        ("\ue000", "U\\+E000"),
        ("\x1b", "U\\+001B"),
    ],
)
def test_invisible_and_control_characters_are_refused(fs: VirtualFS, char: str, what: str) -> None:
    with pytest.raises(VfsError, match=f"Refused: the path contains .*{what}"):
        fs.write(f"note{char}s.md", "x")
    assert fs.list() == ["notes.md"], "a refused write changes nothing"


def test_visible_non_ascii_names_are_fine() -> None:
    fs = VirtualFS("A")
    for name in ("résumé.md", "日本語.txt", "naïve/notes.md"):
        fs.write(name, "ok")
    assert len(fs.list()) == 3
