"""Property-based run of the OpenAPI document against a real daemon: no 5xx, no answer that
contradicts the document (status codes, content types, response schemas)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from tests.api.seed_daemon import start_daemon
from tests.harness import DaemonProc
from watcherd.api.openapi import openapi_document


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    d = start_daemon(tmp_path_factory.mktemp("schemathesis"))
    yield d
    d.close()


schema = schemathesis.openapi.from_dict(openapi_document())


@schema.parametrize()
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
def test_api_conforms(case: schemathesis.Case, daemon: DaemonProc) -> None:
    case.call_and_validate(
        base_url=daemon.url,
        headers={"Authorization": f"Bearer {daemon.token}"},
        # A schema-valid body may still name an unknown pipeline or break one of Azure ML's
        # cross-field rules: the documented answer is 422, which this check counts as a miss.
        excluded_checks=[checks.positive_data_acceptance],
    )
