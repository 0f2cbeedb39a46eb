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


# ------------------------------------------------------------------------ hostile generators (issue 20)
def _hostile_values() -> Any:
    from hypothesis import strategies as st

    leaves = st.one_of(
        st.integers(min_value=2**53, max_value=10**40), st.integers(max_value=-(2**63)),
        st.floats(allow_nan=False, allow_infinity=False, min_value=-1e308, max_value=1e308),
        st.just(5e-324), st.text(alphabet=st.characters(codec="utf-8"), max_size=20).map(lambda t: t + "\x00"),
        st.just("\u0000"), st.just("x" * 5000), st.booleans(), st.none(),
    )
    return st.recursive(leaves, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                        max_leaves=12)


def _deep(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


def test_hostile_specs_and_ids_never_5xx(settings, spec_dict):
    """A valid spec with one value anywhere replaced by something hostile (huge or tiny numbers, NUL, long
    strings, nesting), ids with NUL and control characters, deep nesting: never a 5xx, never half-written."""
    from fastapi.testclient import TestClient
    from hypothesis import strategies as st

    app = create_app(settings)
    paths = [("name",), ("split", "seed"), ("split", "test_fraction"), ("budget", "n_trials"), ("budget", "max_epochs"),
             ("search_space", "lr"), ("search_space", "dropout", "step"), ("model", "hidden"),
             ("dataset", "builtin"), ("early_stopping", "min_delta"), ("pruner", "min_resource"),
             ("sampler", "seed"), ("search_space", "x\x00y"), ("objective",)]
    with TestClient(app, headers={"X-Requested-With": "fuzz"}) as c:

        @given(where=st.sampled_from(paths), value=_hostile_values())
        @_settings(60)
        def run(where: tuple[str, ...], value: Any) -> None:
            spec = spec_dict()
            node = spec
            for key in where[:-1]:
                node = node.setdefault(key, {}) if isinstance(node.get(key, {}), dict) else {}
            node[where[-1]] = value
            r = c.post("/jobs", json=spec)
            assert r.status_code < 500, (where, value, r.text)

        run()
        import json as _json

        for body in (_deep(10_000), '{"name": ' + _deep(5000) + "}", _json.dumps(spec_dict(name="a\x00b"))):
            r = c.post("/jobs", content=body, headers={"Content-Type": "application/json"})
            assert r.status_code in (400, 413, 422), r.text
        for path in ("/jobs/%00", "/jobs/a%00b/result", "/datasets/%00", "/jobs/%0a/trials", "/jobs/" + "9" * 5000):
            for method in ("GET", "DELETE"):
                assert c.request(method, path).status_code < 500, path
        jobs = c.get("/jobs").json()
        for job in jobs["items"]:  # whatever was accepted is a whole, valid job
            assert "\x00" not in job["name"]


def test_schemathesis_cases_with_hostile_values_never_5xx(settings):
    """schemathesis' own cases for every operation with a JSON body (NUL allowed in its strings), with one
    value anywhere in the body replaced by a hostile one (huge or tiny numbers, NUL, long strings,
    nesting): no 5xx."""
    from hypothesis import strategies as st

    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(settings))
    schema.config.generation.update(allow_x00=True)
    operations = [op for op in (r.ok() for r in schema.get_all_operations())
                  if op.method.upper() in ("POST", "PUT", "PATCH") and op.body]
    assert any(op.label == "POST /jobs" for op in operations)

    def paths(body: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        out = [prefix] if prefix else []
        if isinstance(body, dict):
            for k, v in body.items():
                out += paths(v, (*prefix, k))
        elif isinstance(body, list):
            for i, v in enumerate(body[:3]):
                out += paths(v, (*prefix, i))
        return out

    failures: dict[str, str] = {}
    for op in operations:

        @given(case=op.as_strategy(generation_mode=GenerationMode.POSITIVE), data=st.data())
        @_settings(25)
        def run(case: schemathesis.Case, data: Any) -> None:
            if isinstance(case.body, (dict, list)) and (where := paths(case.body)):
                path = data.draw(st.sampled_from(where))
                node = case.body
                for key in path[:-1]:
                    node = node[key]
                node[path[-1]] = data.draw(_hostile_values())
            case.headers = {**(case.headers or {}), "X-Requested-With": "fuzz"}
            case.call_and_validate(checks=[not_a_server_error])

        try:
            run()
        except Unsatisfiable:
            pass
        except Exception as exc:  # noqa: BLE001 - report every operation's failure together
            failures[op.label] = str(exc)[:3000]
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
