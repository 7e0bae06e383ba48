"""The web backend's OpenAPI schema, fuzzed by schemathesis: with no token, a wrong one and a valid
one, no request gets a 500, and every response matches what the schema declares (status, content
type, body). A short setting here; more examples with ``WEB_FUZZ_EXAMPLES=200``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from web_fixture import ServiceThread

from helpers.web.service import Settings

pytestmark = pytest.mark.runtime
EXAMPLES = int(os.environ.get("WEB_FUZZ_EXAMPLES", "6"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def web() -> Iterator[ServiceThread]:
    running = ServiceThread(Settings(turn_timeout_s=30, turns_per_user=4))
    try:
        yield running
    finally:
        running.stop()


def operations(web: ServiceThread) -> list:
    schema = schemathesis.openapi.from_url(f"{web.url}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def test_no_500s_and_every_response_as_declared(web: ServiceThread) -> None:
    """Each operation, fuzzed with no token, a wrong one and a valid one.

    (schemathesis's own pytest plugin does not run on this pytest, so each operation's
    strategy is driven through hypothesis directly.)
    """
    token = web.call(web.service.tokens.issue("fuzz"))
    tried: list[str] = []
    for operation in operations(web):

        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def fuzz(case) -> None:
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": f"Bearer {token}"},
            ):
                case.call_and_validate(headers=headers, checks=CHECKS, base_url=web.url)

        fuzz()
        tried.append(operation.label)
    assert len(tried) >= 10, tried
    assert web.service.server.running and web.service.running() == 0, "nothing left running"
