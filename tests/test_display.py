"""What the notebooks print through ``show`` and the modules it hands on: probes, redaction, reply
text, and the line naming what the helpers change in the SDK."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers.errors import NoReply
from helpers.notebook import display as show
from helpers.notebook import probes, redaction, sdk_replies
from helpers.runtime import startup, transport, watchdog


def test_file_contains_finds_a_codename_of_any_script_in_any_case(tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").write_text('{"content": "the codename is ÉMERAUDE HERON 7"}')
    (tmp_path / "other.txt").write_text("nothing here")
    (tmp_path / "binary.db").write_bytes(b"\xff\xfe aurora-7 \x00")
    decomposed = "E\u0301meraude Heron 7"
    assert show.file_contains(tmp_path, decomposed) == [str(tmp_path / "events.jsonl")]
    assert show.file_contains(tmp_path, "AURORA-7") == [str(tmp_path / "binary.db")]
    assert show.file_contains(tmp_path, "absent", "") == []


def test_session_leftovers_lists_every_file_dot_folders_included(tmp_path: Path) -> None:
    assert probes.session_leftovers(None) == [] and probes.session_leftovers(tmp_path) == []
    lock = tmp_path / "session-state" / ".session-operation-locks" / "s.lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    assert probes.session_leftovers(tmp_path) == [".session-operation-locks/s.lock"]


def test_redacted_hides_secret_looking_keys_at_any_depth() -> None:
    value = {"provider": {"api_key": "k-123", "base_url": "u"}, "list": [{"token": "t"}], "n": 1}
    assert redaction.redacted(value) == {
        "provider": {"api_key": "***", "base_url": "u"},
        "list": [{"token": "***"}],
        "n": 1,
    }
    assert redaction.redacted({"api_key": ""}) == {"api_key": ""}, "an empty key is shown empty"


def test_text_of_reads_the_reply_and_names_a_missing_one() -> None:
    assert sdk_replies.text_of(SimpleNamespace(data=SimpleNamespace(content="hi"))) == "hi"
    assert show.text_of(SimpleNamespace(data=SimpleNamespace(content=None))) == ""
    with pytest.raises(NoReply, match="send_and_wait returned None"):
        show.text_of(None)


def test_the_sdk_changes_line_says_what_is_switched_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(transport._state, "installed", False)
    monkeypatch.setitem(watchdog._state, "installed", False)
    assert startup.sdk_changes() == "The helpers change nothing in the SDK in this process."
    monkeypatch.setitem(transport._state, "installed", True)
    monkeypatch.setitem(transport._state, "nodelay", True)
    monkeypatch.setitem(transport._state, "quickack", True)
    monkeypatch.setitem(transport._state, "buffered", False)
    monkeypatch.setitem(watchdog._state, "installed", True)
    line = startup.sdk_changes()
    assert "TCP_NODELAY, TCP_QUICKACK on every client's socket" in line
    assert "a turn fails at once when its runtime dies" in line
    monkeypatch.setitem(transport._state, "nodelay", False)
    monkeypatch.setitem(transport._state, "quickack", False)
    assert "TCP_" not in startup.sdk_changes(), "options switched off are not claimed"


def test_stopwatch_times_named_laps() -> None:
    clock = show.Stopwatch()
    with clock.lap("create"):
        pass
    assert set(clock.ms) == {"create"} and clock.ms["create"] >= 0
