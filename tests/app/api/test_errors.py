"""One error shape: JSON ``{"detail": ...}`` for 404/405/413/422/500/503, declared in the OpenAPI schema."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.main import create_app


def test_starlette_errors_are_json(client):
    r = client.get("/nowhere")
    assert r.status_code == 404 and r.json() == {"detail": "Not Found"}
    r = client.put("/jobs")
    assert r.status_code == 405 and r.json() == {"detail": "Method Not Allowed"} and "allow" in r.headers


def test_unhandled_exception_is_500_json(settings):
    app = create_app(settings)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    with TestClient(app, raise_server_exceptions=False, headers={"X-Requested-With": "tuneserve-tests"}) as c:
        r = c.get("/boom")
    assert r.status_code == 500
    assert r.json() == {"detail": "internal server error (RuntimeError)"}


@pytest.mark.parametrize("url", ["postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=2"])
def test_database_down_is_503_with_retry_after(settings, url, spec_dict):
    settings = settings.model_copy(update={"database_url": url})
    with TestClient(create_app(settings), raise_server_exceptions=False, headers={"X-Requested-With": "tuneserve-tests"}) as c:
        for method, path, kwargs in [("get", "/jobs", {}), ("get", "/jobs/x", {}), ("get", "/datasets", {}),
                                     ("post", "/jobs", {"json": spec_dict()}), ("get", "/jobs/x/trials", {}),
                                     ("get", "/readyz", {})]:
            r = getattr(c, method)(path, **kwargs)
            assert r.status_code == 503, (path, r.text)
            assert r.headers["content-type"] == "application/json"
            assert r.json()["detail"].startswith(("the database is unreachable", "database unreachable"))
            if path != "/readyz":
                assert r.headers["retry-after"] == "5"


def test_every_operation_declares_its_errors(client):
    schema = client.get("/openapi.json").json()
    assert "ErrorResponse" in schema["components"]["schemas"]
    for path, item in schema["paths"].items():
        for method, op in item.items():
            codes = set(op["responses"])
            assert {"500", "503"} <= codes, (method, path)
            if path.startswith(("/jobs", "/datasets")):
                assert {"404", "409", "413", "422"} <= codes, (method, path)
            for code in codes - {"200", "201", "204", "304"}:  # a 304 has no body
                ref = op["responses"][code]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorResponse"), (method, path, code)
    post = schema["paths"]["/datasets"]["post"]
    assert "201" in post["responses"]


def test_every_route_has_a_body_limit(client, settings):
    """Not only POST /jobs: any route (present or added later) refuses a body past TUNER_MAX_JSON_KB."""
    body = b"x" * (settings.max_json_bytes + 1)
    for method, path in (("post", "/jobs/x/cancel"), ("delete", "/jobs/x"), ("post", "/healthz")):
        r = client.request(method.upper(), path, content=body)
        assert r.status_code == 413 and r.json() == {"detail": "the request body is larger than the limit of 256 KiB"}


def test_optuna_storage_error_is_503(client, spec_dict, monkeypatch):
    import optuna

    job = client.post("/jobs", json=spec_dict()).json()

    def down() -> None:
        raise optuna.exceptions.StorageInternalError("connection lost")

    monkeypatch.setattr(client.app.state, "storage", down)
    r = client.get(f"/jobs/{job['id']}/trials")  # GET /jobs/{id} reads only the job row
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert r.json() == {"detail": "the database is unreachable (StorageInternalError); retry in a few seconds"}
