"""The one line before a notebook's first section: check its parameters, then prepare the run.

``RUN = prepare("01", globals())`` checks every parameter the notebook's namespace holds against
the rule of that name (one rule, and so one message, per parameter name in every notebook),
raises ``ParameterError`` listing every bad value before anything starts, puts codenames in NFC
and counts as ``int``, tidies the SDK's error logs, and makes the run's folder, removed when the
kernel stops (``helpers.run.run_dir``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers.notebook import params as p
from helpers.notebook.sdk_logging import tidy_sdk_logging
from helpers.run import run_dir
from helpers.tools.vfs import check_path

RULES: dict[str, p.Rule] = {
    "BACKEND": p.backend,
    "CLI_URL": p.cli_url,
    "CODENAME": p.codename,
    "SESSION_A": p.session_id,
    "SESSION_B": p.session_id,
    "KEEP_STATE": p.boolean,
    "TIMEOUT_S": p.timeout,
    # notebook 02
    "NOTE_NAME": p.both(
        p.satisfies(check_path),
        p.text(
            r"\w[\w./-]*\.[A-Za-z0-9]{1,8}",
            "a relative file name with an extension, such as notes.md",
        ),
    ),
    "NOTE_TEXT": p.text(
        r"\S[^\x00-\x1f\x7f\u201d]{6,198}\S",
        "one line of 8 to 200 characters, without a closing curly quote (\u201d) "
        "and without spaces at either end",
    ),
    # notebooks 03, 07 and 08
    "USERS_AT_ONCE": p.number(2, 64),
    "SLOW_TURN_S": p.number(1, 30),
    "ORPHAN_AGE_S": p.number(0.1, 60),
    # notebooks 04 and 05
    "USERS": p.number(1, 32),
    "TURNS": p.number(1, 20),
    "ROUTING": p.one_of("least-busy", "hash"),
    "COST_ROUNDS": p.number(1, 50),
    # notebook 06
    "STEP_ROUNDS": p.number(1, 200),
    "SPEED_REQUESTS": p.number(2, 2000),
    "AT_ONCE": p.number(2, 64),
    "ISOLATION_REQUESTS": p.number(2, 500),
    "PROMPT": p.text(r"\S[^\x00-\x1f\x7f]{0,498}\S", "one line of 2 to 500 characters"),
    # notebook 07
    "TURNS_PER_USER": p.number(2, 16),
    # notebook 08
    "INSTANCES": p.number(2, 4),
    "LOAD_S": p.number(2, 120),
    # notebook 09
    "BUDGET_TOKENS": p.number(100, 10**9),
    "BUDGET_PERIOD_S": p.number(2, 86400),
    "METER_TURNS": p.number(2, 200),
}
COUNTS = {
    "USERS_AT_ONCE",
    "USERS",
    "TURNS",
    "COST_ROUNDS",
    "STEP_ROUNDS",
    "SPEED_REQUESTS",
    "AT_ONCE",
    "ISOLATION_REQUESTS",
    "TURNS_PER_USER",
    "INSTANCES",
    "BUDGET_TOKENS",
    "METER_TURNS",
}


def check_parameters(namespace: dict[str, Any]) -> None:
    """Check each known parameter in ``namespace``; normalise codenames (NFC) and counts (int).

    Raises:
        ParameterError: every bad value at once, one line each, naming the fix.
    """
    given = {name: (namespace[name], rule) for name, rule in RULES.items() if name in namespace}
    pair = None
    if "SESSION_A" in namespace and "SESSION_B" in namespace:
        pair = p.different("SESSION_A", namespace["SESSION_A"], "SESSION_B", namespace["SESSION_B"])
    p.check(pair, **given)
    if "CODENAME" in namespace:
        namespace["CODENAME"] = p.nfc(namespace["CODENAME"])  # "é" typed either way is one name
    for name in COUNTS & set(namespace):
        namespace[name] = int(namespace[name])


def prepare(notebook: str, namespace: dict[str, Any]) -> Path:
    """Check the parameters in ``namespace``, then make this run's folder ``tmp/runs/<nn>-…``.

    Args:
        notebook: The notebook's number, such as ``"01"``: the run folder's name.
        namespace: The notebook's ``globals()``, holding its parameters.

    Returns:
        The run's folder, removed when the kernel stops unless ``KEEP_STATE`` is true.
    """
    check_parameters(namespace)
    tidy_sdk_logging()
    return run_dir(notebook, keep=bool(namespace.get("KEEP_STATE", False)))
