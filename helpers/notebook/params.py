"""The rules a notebook's parameters are checked by, one message per bad value.

The rules every notebook shares are defined once at the bottom (``backend``, ``cli_url``,
``codename``, ``session_id``, ``timeout``, ``boolean``), and ``helpers/notebook/prepare.py`` names
the rule of each parameter, so a parameter has one rule and one message in every notebook. A
pydantic model per notebook would list every bad field as well, but it would word its messages as
pydantic does ("Input should be ..."), without the fix (``-r`` for a number that must stay a
string, which characters a codename may hold).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Any

from helpers.errors import ParameterError

Rule = Callable[[str, Any], str | None]


def check(*more: str | None, **rules: tuple[Any, Rule]) -> None:
    """Apply each ``NAME=(value, rule)``; raise ``ParameterError`` listing every problem at once.

    Positional arguments are further problems found otherwise (``None`` for none), such as
    :func:`different`.
    """
    problems = [problem for name, (value, rule) in rules.items() if (problem := rule(name, value))]
    problems += [problem for problem in more if problem]
    if problems:
        raise ParameterError("Bad parameter value(s):\n" + "\n".join(f"  - {p}" for p in problems))


def nfc(value: Any) -> Any:
    """``value`` in Unicode NFC when it is a string (``é`` typed as one code point or as two)."""
    return unicodedata.normalize("NFC", value) if isinstance(value, str) else value


def text(
    pattern: str = r"[^\x00-\x1f\x7f]+",
    allowed: str = "printable text",
    max_len: int = 200,
    min_len: int = 0,
) -> Rule:
    """A rule for a string whose NFC form matches ``pattern`` (``allowed`` says it in words)."""
    compiled = re.compile(pattern)

    def rule(name: str, value: Any) -> str | None:
        if not isinstance(value, str):
            return (
                f"{name} = {value!r} is a {type(value).__name__}; it must be a string "
                f"(papermill passes -p {name} 12345 as a number: use -r {name} 12345)."
            )
        value = nfc(value)
        if len(value) > max_len:
            return f"{name} must be at most {max_len} characters long (got {len(value)})."
        if len(value) < min_len:
            return f"{name} = {value!r} is not allowed; use {allowed}."
        if not compiled.fullmatch(value):
            return f"{name} = {value!r} is not allowed; use {allowed}."
        return None

    return rule


def identifier(max_len: int = 64) -> Rule:
    """A rule for session ids: letters, digits, ``_`` and ``-``, starting alphanumeric.

    Runtime 1.0.102 refuses a session id with a dot ("invalid sessionId"), so none is allowed.
    """
    return text(
        r"[A-Za-z0-9][A-Za-z0-9_-]*",
        f"letters, digits, '_' and '-' only, starting with a letter or digit, at most "
        f"{max_len} characters",
        max_len,
    )


def boolean(name: str, value: Any) -> str | None:
    """A rule for ``True``/``False``."""
    return None if isinstance(value, bool) else f"{name} = {value!r} must be True or False."


def number(low: float, high: float) -> Rule:
    """A rule for an int or float within ``[low, high]``."""

    def rule(name: str, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{name} = {value!r} must be a number between {low} and {high}."
        if not low <= value <= high:
            return f"{name} = {value!r} is out of range; use a number between {low} and {high}."
        return None

    return rule


def one_of(*choices: str) -> Rule:
    """A rule for a string that must be one of ``choices``."""

    def rule(name: str, value: Any) -> str | None:
        if value not in choices:
            return f"{name} = {value!r} is not one of {', '.join(repr(c) for c in choices)}."
        return None

    return rule


def different(name: str, value: Any, other_name: str, other: Any) -> str | None:
    """A problem message when two parameters that must differ are equal, else ``None``."""
    return f"{name} and {other_name} must differ (both are {value!r})." if value == other else None


def satisfies(check: Callable[[Any], object]) -> Rule:
    """A rule that calls ``check(value)``; a ``ValueError`` it raises is the problem."""

    def rule(name: str, value: Any) -> str | None:
        try:
            check(value)
        except ValueError as exc:
            return f"{name} = {value!r}: {exc}"
        return None

    return rule


def both(first: Rule, second: Rule) -> Rule:
    """A rule that reports the first of two rules' problems."""
    return lambda name, value: first(name, value) or second(name, value)


# The rules the notebooks share: one rule, and so one message, per kind of parameter.

backend = one_of("", "local", "github", "byok")
cli_url = text(r"|[A-Za-z0-9.-]+:\d{1,5}", "host:port such as 127.0.0.1:4321, or empty")
codename = text(
    # After NFC: a letter or digit of any script at each end; inside letters, digits, '-', '_'
    # and single spaces; at least one letter and one digit.
    r"(?=.*[^\W\d_])(?=.*\d)[^\W_](?:[\w-]| (?! ))*[^\W_]",
    "4 to 40 characters: letters (of any script), digits, '-', '_' and single spaces inside, "
    "with at least one letter and one digit (so it cannot turn up in an answer by chance), "
    "starting and ending with a letter or digit (the stand-in and the checks read no "
    "punctuation, quotes or line breaks)",
    max_len=40,
    min_len=4,
)
session_id = identifier()
timeout = number(1, 3600)
