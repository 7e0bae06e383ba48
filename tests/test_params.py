"""The parameter rules: each notebook's check cell, run on its own with bad values, and the shared
rules (one CODENAME rule, one message, in every notebook)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from conftest import REPO_ROOT

from helpers.errors import ParameterError
from helpers.notebook import params as p
from helpers.notebook.prepare import check_parameters

NOTEBOOKS = REPO_ROOT / "notebooks"
NB01 = "01_multi_user_long_lived.ipynb"
NB02 = "02_multi_user_short_lived.ipynb"
NB03 = "03_serving_many_users.ipynb"
NB04 = "04_session_state_in_the_database.ipynb"
NB05R = "05_routing_and_races.ipynb"
ALL = sorted(path.name for path in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def parameters_of(name: str) -> str:
    cells = json.loads((NOTEBOOKS / name).read_text())["cells"]
    return next(
        "".join(c["source"]) for c in cells if "parameters" in c["metadata"].get("tags", [])
    )


WITH_CODENAME = [name for name in ALL if re.search(r"^CODENAME = ", parameters_of(name), re.M)]
NB05 = "06_making_it_fast.ipynb"


def check_cell(name: str, **overrides: Any) -> dict[str, Any]:
    """Run a notebook's parameters cell, then ``overrides`` (as papermill injects them), then the
    cell after it (the check) in a fresh namespace; return the namespace."""
    cells = json.loads((NOTEBOOKS / name).read_text())["cells"]
    index = next(i for i, c in enumerate(cells) if "parameters" in c["metadata"].get("tags", []))
    namespace: dict[str, Any] = {}
    exec("".join(cells[index]["source"]), namespace)
    namespace.update(overrides)
    after = "".join(next(c for c in cells[index + 1 :] if c["cell_type"] == "code")["source"])
    if "prepare(" in after:  # the check prepare() runs before it makes anything
        check_parameters(namespace)
    else:
        exec(after, namespace)
    return namespace


def refused(name: str, *expected: str, **overrides: Any) -> str:
    """The check cell of ``name`` refuses ``overrides`` with one error naming every problem."""
    with pytest.raises(ParameterError) as failed:
        check_cell(name, **overrides)
    message = str(failed.value)
    for text in expected:
        assert text in message, f"missing {text!r} in:\n{message}"
    assert message.count("\n  - ") == len(expected), f"one line per problem:\n{message}"
    return message


@pytest.mark.parametrize("name", ALL)
def test_each_notebook_accepts_its_own_defaults(name: str) -> None:
    check_cell(name)


@pytest.mark.parametrize("name", ALL)
def test_the_check_cell_comes_right_after_the_parameters_and_before_anything_starts(
    name: str,
) -> None:
    cells = json.loads((NOTEBOOKS / name).read_text())["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    assert "parameters" in next(c for c in cells if c["cell_type"] == "code")["metadata"]["tags"]
    for starts in ("run_dir(", "choose_backend(", "shared_server(", "start_server(", "start_web("):
        assert starts not in code[0] + code[1], f"{starts} runs before the check"
    if "prepare(" in code[1]:  # imports, then the one line that checks and prepares the run
        last = code[1].rstrip().splitlines()[-1]
        assert re.match(rf'RUN = prepare\("{name[:2]}", globals\(\)\)', last), last
        assert all(
            line.startswith(("import ", "from ", " ", ")")) or not line.strip()
            for line in code[1].rstrip().splitlines()[:-1]
        ), "only imports before it"
    else:
        assert code[1].lstrip().startswith("from helpers.notebook import params as p"), code[1]
        assert "p.check(" in code[1]


def test_notebook_01_names_every_bad_value_at_once() -> None:
    refused(
        NB01,
        "CODENAME = 12345 is a int; it must be a string",
        "SESSION_A and SESSION_B must differ",
        "BACKEND = 'nope' is not one of",
        "TIMEOUT_S = 0 is out of range",
        "KEEP_STATE = 'yes' must be True or False",
        CODENAME=12345,
        SESSION_A="same-id",
        SESSION_B="same-id",
        BACKEND="nope",
        TIMEOUT_S=0,
        KEEP_STATE="yes",
    )
    refused(NB01, "SESSION_A = 'a.2' is not allowed", SESSION_A="a.2")


@pytest.mark.parametrize("name", WITH_CODENAME)
@pytest.mark.parametrize("codename", ["line\nbreak-1", 'ZE"PH\\YR-42', "ORION-5!", "12345", "x"])
def test_every_notebook_refuses_a_bad_codename_with_the_same_message(
    name: str, codename: str
) -> None:
    message = refused(name, f"CODENAME = {codename!r} is not allowed", CODENAME=codename)
    assert "letters (of any script), digits, '-', '_' and single spaces inside" in message


@pytest.mark.parametrize("name", WITH_CODENAME)
def test_a_codename_with_accents_and_spaces_is_accepted_and_kept_in_nfc(name: str) -> None:
    decomposed = "E\u0301meraude Heron 7"  # É typed as E + a combining accent
    namespace = check_cell(name, CODENAME=decomposed)
    assert namespace["CODENAME"] == "\u00c9meraude Heron 7", (
        "the notebook goes on with the NFC form"
    )


def test_notebook_02_names_every_bad_value_at_once() -> None:
    refused(
        NB02,
        "NOTE_NAME = '../escape.md': Refused",
        "NOTE_TEXT = 'two\\nlines here' is not allowed",
        NOTE_NAME="../escape.md",
        NOTE_TEXT="two\nlines here",
    )
    refused(NB02, "NOTE_NAME = '/etc/passwd'", NOTE_NAME="/etc/passwd")
    refused(
        NB02,
        "BACKEND = 'gpt' is not one of",
        "CLI_URL = 'no port' is not allowed",
        "KEEP_STATE = 1 must be True or False",
        "TIMEOUT_S = -5 is out of range",
        BACKEND="gpt",
        CLI_URL="no port",
        KEEP_STATE=1,
        TIMEOUT_S=-5,
    )


def test_notebook_03_names_every_bad_value_at_once() -> None:
    refused(
        NB03,
        "USERS_AT_ONCE = 1 is out of range",
        "SLOW_TURN_S = 'slow' must be a number",
        "ORPHAN_AGE_S = -1 is out of range",
        "CODENAME = 'x' is not allowed",
        "BACKEND = 'cloud' is not one of",
        USERS_AT_ONCE=1,
        SLOW_TURN_S="slow",
        ORPHAN_AGE_S=-1,
        CODENAME="x",
        BACKEND="cloud",
    )


def test_notebook_05_names_every_bad_value_at_once() -> None:
    refused(
        NB05,
        "AT_ONCE = 1 is out of range",
        "SPEED_REQUESTS = 'many' must be a number",
        "PROMPT = '' is not allowed",
        "BACKEND = 'cloud' is not one of",
        "KEEP_STATE = 'no' must be True or False",
        AT_ONCE=1,
        SPEED_REQUESTS="many",
        PROMPT="",
        BACKEND="cloud",
        KEEP_STATE="no",
    )


def test_notebook_04_names_every_bad_value_at_once() -> None:
    refused(
        NB04,
        "COST_ROUNDS = 1000 is out of range",
        "SESSION_A = 'a.b' is not allowed",
        "CODENAME = 12345 is a int; it must be a string",
        COST_ROUNDS=1000,
        SESSION_A="a.b",
        CODENAME=12345,
    )


def test_notebook_05_routing_names_every_bad_value_at_once() -> None:
    refused(
        NB05R,
        "USERS = 0 is out of range",
        "TURNS = '5' must be a number",
        "ROUTING = 'random' is not one of",
        USERS=0,
        TURNS="5",
        ROUTING="random",
    )


@pytest.mark.parametrize(
    "value",
    [
        "AURORA-7",
        "zephyr_42-X",
        "\u00c9meraude Heron 7",
        "E\u0301meraude Heron 7",
        "東京 7号",
        "abc7",
    ],
)
def test_the_codename_rule_accepts_letters_of_any_script_and_inner_spaces(value: str) -> None:
    assert p.codename("CODENAME", value) is None


@pytest.mark.parametrize(
    "value",
    ["two  spaces 7", " lead 7", "trail 7 ", "tab\there 7", "no digit", "x" * 40 + "7", "7-7-7"],
)
def test_the_codename_rule_refuses_what_the_checks_cannot_read(value: str) -> None:
    assert p.codename("CODENAME", value), f"{value!r} should be refused"


def test_a_rule_reads_the_nfc_form_so_both_spellings_get_one_answer() -> None:
    rule = p.text(r"caf\u00e9", "café")
    assert rule("X", "caf\u00e9") is None and rule("X", "cafe\u0301") is None
    assert p.nfc("cafe\u0301") == "caf\u00e9" and p.nfc(5) == 5


def test_numbers_booleans_and_choices() -> None:
    assert p.timeout("T", 1) is None and p.timeout("T", 3600) is None
    assert "out of range" in (p.timeout("T", 0) or "")
    assert "must be a number" in (p.timeout("T", True) or ""), "a bool is not a number"
    assert p.boolean("K", False) is None and p.boolean("K", 0)
    assert p.backend("B", "") is None and p.backend("B", "byok") is None and p.backend("B", "x")
    assert p.cli_url("U", "") is None and p.cli_url("U", "127.0.0.1:4321") is None
    assert p.cli_url("U", "http://127.0.0.1:4321")
    assert (
        p.session_id("S", "user-a_1") is None
        and p.session_id("S", "-a")
        and p.session_id("S", "a.b")
    )
    assert p.different("A", 1, "B", 1) and p.different("A", 1, "B", 2) is None


def test_check_lists_every_problem_in_one_error_and_passes_clean_values() -> None:
    p.check(A=("ok", p.text()), B=(2, p.number(1, 3)))
    with pytest.raises(ParameterError) as failed:
        p.check("extra problem", None, A=(5, p.text()), B=(9, p.number(1, 3)))
    lines = str(failed.value).splitlines()
    assert lines[0] == "Bad parameter value(s):" and len(lines) == 4, lines


def test_prepare_turns_counts_into_ints_after_the_check() -> None:
    namespace = check_cell(NB03, USERS_AT_ONCE=8.0)
    assert namespace["USERS_AT_ONCE"] == 8 and isinstance(namespace["USERS_AT_ONCE"], int)
