"""Fuzzing: schemathesis generates requests from the live OpenAPI schema and checks every reply.

No 5xx, every status code, content type and body as the schema declares them. Runs in-process over ASGI
against a real database (SQLite and Postgres) with a small, fixed number of examples per operation (valid
and invalid input), then a short stateful run that follows the links between operations (a created
job's id into GET/DELETE). Reproducible (``derandomize``) and bounded in time.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 20


def _settings(examples: int, **kw: Any) -> hypothesis_settings:
    return hypothesis_settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                               suppress_health_check=list(HealthCheck), **kw)


def test_api_conforms_to_its_schema(settings):
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(settings))
    failures: dict[str, str] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=op.as_strategy(generation_mode=mode))
            @_settings(EXAMPLES)
            def run(case: schemathesis.Case) -> None:
                case.call_and_validate(checks=CHECKS)

            try:
                run()
            except Unsatisfiable:  # nothing invalid to send (e.g. only a free-form string in the path)
                pass
            except Exception as exc:  # noqa: BLE001 - collect every operation's failure, then report them all
                failures[f"{op.label} ({mode})"] = str(exc)[:3000]
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())


def test_api_stateful(settings):
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(settings))

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def validate_response(self, response: Any, case: schemathesis.Case, **kwargs: Any) -> None:
            case.validate_response(response, checks=CHECKS)

    Workflow.run(settings=_settings(15, stateful_step_count=6))
