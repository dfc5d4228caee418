"""schemathesis fuzzes the live server from its own OpenAPI document: no 5xx, every response as documented."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from nexus.openapi import document
from tests.live.conftest import demo_server

schema = schemathesis.openapi.from_dict(document())
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    """A server of its own: the fuzzer may delete the demo model."""
    server = demo_server(tmp_path_factory, workers=2)
    yield server
    server.stop()


@schema.parametrize()
@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)
def test_no_server_error_and_every_response_matches_the_document(fuzzed, case):
    case.call_and_validate(base_url=fuzzed.url(), checks=CHECKS, headers={"Connection": "close"}, timeout=20)
