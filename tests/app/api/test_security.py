"""Issue 13 over HTTP: API keys (401s, revocation), tenants (404s, filtered lists), quotas, Host/CORS/POST guards.

Cross-tenant checks are one table (:data:`ID_ROUTES`); a test compares it with the app's routes, so a route
that takes a job or data set id and is missing from the table fails the suite until its line is added.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.db import get_engine, session_scope
from app.main import create_app
from app.models import ApiKey, Job
from app.services import keys as key_service

XRW = {"X-Requested-With": "tests"}

# (method, path[, JSON body]): {job} / {dataset} become the other tenant's ids. One line per route that takes one.
ID_ROUTES: list[tuple[str, str] | tuple[str, str, Any]] = [
    ("GET", "/jobs/{job}"),
    ("GET", "/jobs/{job}/trials"),
    ("POST", "/jobs/{job}/cancel"),
    ("DELETE", "/jobs/{job}"),
    ("GET", "/datasets/{dataset}"),
    ("DELETE", "/datasets/{dataset}"),
    ("GET", "/jobs/{job}/model"),
    ("POST", "/jobs/{job}/predict", {"rows": [[1, 2, 3, 4]]}),
    ("GET", "/jobs/{job}/result"),
    ("GET", "/jobs/{job}/events"),
    ("GET", "/jobs/{job}/importance"),
    ("GET", "/jobs/{job}/plots/{kind}"),
]


@pytest.fixture
def make_app(settings: Settings) -> Callable[..., Any]:
    def make(**over: Any) -> Any:
        return create_app(settings.model_copy(update={"auth_cache_s": 0, **over}))

    return make


@pytest.fixture
def api(make_app: Callable[..., Any]) -> Iterator[TestClient]:
    """A client that sends no key and no X-Requested-With header (a stranger's browser or script)."""
    with TestClient(make_app()) as c:
        yield c


@pytest.fixture
def make_key(settings: Settings) -> Callable[..., str]:
    def make(tenant: str = "default", admin: bool = False) -> str:
        with session_scope(get_engine(settings.database_url), write=True) as s:
            return key_service.create_key(s, f"{tenant}-key", tenant=tenant, admin=admin)[1]

    return make


def api_routes(app: Any) -> set[tuple[str, str]]:
    """(METHOD, path) of every API route (from the OpenAPI document: routers nest in FastAPI 0.165)."""
    return {(m.upper(), path) for path, ops in app.openapi()["paths"].items() for m in ops}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _upload(c: TestClient, token: str, content: bytes) -> Any:
    return c.post("/datasets", files={"file": ("iris.csv", content)}, data={"target": "species"},
                  headers=bearer(token))


def _owned(api: TestClient, token: str, spec_dict: Any, iris_csv: bytes) -> dict[str, str]:
    r = _upload(api, token, iris_csv)
    assert r.status_code == 201, r.text
    ds = r.json()["id"]
    r = api.post("/jobs", json=spec_dict(dataset={"id": ds}), headers=bearer(token))
    assert r.status_code == 201, r.text
    return {"job": r.json()["id"], "dataset": ds}


# ----------------------------------------------------------------------------------------- API keys
def test_without_keys_everything_is_open_to_tenant_default(api, spec_dict, settings):
    r = api.post("/jobs", json=spec_dict())
    assert r.status_code == 201
    assert api.get("/jobs").json()["total"] == 1
    with session_scope(get_engine(settings.database_url)) as s:
        assert s.scalar(sa.select(Job.tenant)) == "default"


def test_with_a_key_every_route_but_health_needs_it(api, make_key):
    token = make_key("a")
    paths = api_routes(api.app) | {("GET", "/docs"), ("GET", "/openapi.json")}
    assert ("GET", "/jobs") in paths and ("POST", "/datasets") in paths
    for method, path in sorted(paths):
        url = path.replace("{job_id}", "x").replace("{dataset_id}", "x")
        if path in ("/healthz", "/readyz"):
            assert api.request(method, url).status_code == 200
            continue
        for headers in ({"Content-Type": "application/json"}, bearer("tsk_wrong"), {"Authorization": "Basic eDp5"}):
            r = api.request(method, url, headers=headers)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
    assert api.get("/jobs", headers=bearer(token)).status_code == 200


def test_key_is_stored_hashed_and_revoked_key_is_refused(api, make_key, settings, caplog):
    caplog.set_level(logging.DEBUG)
    token = make_key("a")
    assert token.startswith("tsk_") and len(token) > 40
    with session_scope(get_engine(settings.database_url), write=True) as s:
        key = s.scalar(sa.select(ApiKey))
        assert key.key_hash == key_service.hash_key(token) != token
        assert key.prefix == token[:10] and token not in key.name + key.key_hash
        assert api.get("/jobs", headers=bearer(token)).status_code == 200
        key_service.revoke_key(s, key.id)
    r = api.get("/jobs", headers=bearer(token))
    assert r.status_code == 401 and r.json()["detail"] == "invalid or revoked API key"
    # the only key is revoked: the service stays closed (it does not fall back to "no keys, open")
    r = api.get("/jobs")
    assert r.status_code == 401 and r.json()["detail"].startswith("an API key is required")
    assert api.get("/dashboard/api/studies").status_code == 401
    assert token not in caplog.text and token[4:] not in caplog.text  # never logged


def test_all_keys_revoked_opens_only_when_the_operator_says_so(make_app, make_key, settings):
    token = make_key("a")
    with session_scope(get_engine(settings.database_url), write=True) as s:
        key_service.revoke_key(s, s.scalar(sa.select(ApiKey.id)))
    with TestClient(make_app()) as c:
        assert c.get("/jobs").status_code == 401
        assert c.get("/jobs", headers=bearer(token)).status_code == 401
    with TestClient(make_app(open_when_all_keys_revoked=True)) as c:
        assert c.get("/jobs").status_code == 200  # explicit setting: anonymous again
        assert c.get("/jobs", headers=bearer(token)).status_code == 401  # the revoked key itself never


def test_exactly_one_authorization_header(api, make_key):
    token, other = make_key("a"), make_key("b")
    assert api.get("/jobs", headers=bearer(token)).status_code == 200
    for pair in ((token, other), (other, token), (token, token), ("tsk_wrong", token)):
        headers = [("Authorization", f"Bearer {pair[0]}"), ("Authorization", f"Bearer {pair[1]}")]
        r = api.get("/jobs", headers=headers)
        assert r.status_code == 401, pair
        assert "exactly one 'Authorization: Bearer <key>'" in r.json()["detail"]


def test_open_event_stream_ends_when_its_key_is_revoked(make_app, make_key, settings, spec_dict):
    token = make_key("a")
    with TestClient(make_app(auth_cache_s=0.5)) as c:
        job_id = c.post("/jobs", json=spec_dict(), headers=bearer(token)).json()["id"]
        revoked_at: list[float] = []

        def revoke() -> None:
            time.sleep(0.3)
            with session_scope(get_engine(settings.database_url), write=True) as s:
                key_service.revoke_key(s, s.scalar(sa.select(ApiKey.id)))
            revoked_at.append(time.monotonic())

        import threading

        t = threading.Thread(target=revoke)
        with c.stream("GET", f"/jobs/{job_id}/events", headers=bearer(token)) as r:
            assert r.status_code == 200
            t.start()
            lines = list(r.iter_lines())  # the job never changes: only a revocation can end the stream
        ended = time.monotonic()
        t.join()
        assert any(line.startswith("event: progress") for line in lines)
        assert not any(line.startswith("event: finished") for line in lines)
        assert ended - revoked_at[0] < 0.5 + 0.5 + 0.5  # cache time + one re-check interval + slack


def test_routes_fail_closed_without_the_middleware():
    from fastapi import FastAPI

    from app.api.auth import AUTHENTICATED
    from app.api.routes import health, jobs

    bare = FastAPI(dependencies=[AUTHENTICATED])  # as if the middleware were forgotten
    bare.include_router(health.router)
    bare.include_router(jobs.router)
    with TestClient(bare) as c:
        assert c.get("/jobs").status_code == 401
        assert c.get("/healthz").status_code == 200


def test_require_keys_without_any_key_refuses(make_app):
    with TestClient(make_app(require_keys=True)) as c:
        assert c.get("/jobs").status_code == 401
        assert c.get("/healthz").status_code == 200


def test_key_lookups_are_cached_briefly(make_app, make_key, settings):
    token = make_key("a")
    with TestClient(make_app(auth_cache_s=0.5)) as c:
        assert c.get("/jobs", headers=bearer(token)).status_code == 200
        with session_scope(get_engine(settings.database_url), write=True) as s:
            key_service.revoke_key(s, s.scalar(sa.select(ApiKey.id)))
        assert c.get("/jobs", headers=bearer(token)).status_code == 200  # cached
        time.sleep(0.6)
        assert c.get("/jobs", headers=bearer(token)).status_code == 401


def test_admin_only_mount_when_keys_exist(make_app, make_key):
    """The real optuna-dashboard mount and /metrics (figures across tenants) are for admin keys only."""
    app = make_app()
    with TestClient(app) as c:
        assert c.get("/dashboard/").status_code == 200  # no keys: single-user
        user, admin = make_key("a"), make_key("ops", admin=True)
        for path in ("/dashboard/", "/metrics"):
            assert c.get(path).status_code == 401
            assert c.get(path, headers=bearer(user)).status_code == 403
            assert c.get(path, headers=bearer(admin)).status_code == 200
        assert "Optuna Dashboard" in c.get("/dashboard/", headers=bearer(admin)).text
        # the web page's shell and scripts are public (they hold no data); the API behind them is not
        assert c.get("/").status_code == 200 and c.get("/web/app.js").status_code == 200
        assert c.get("/jobs").status_code == 401


# ------------------------------------------------------------------------------------------- tenants
def test_id_routes_table_covers_every_route_with_an_id(api):
    taking_ids = {
        (m, p.replace("{job_id}", "{job}").replace("{dataset_id}", "{dataset}"))
        for m, p in api_routes(api.app) if "{job_id}" in p or "{dataset_id}" in p
    }
    assert len(taking_ids) >= 6
    missing = taking_ids - {(route[0], route[1]) for route in ID_ROUTES}
    assert not missing, f"add these routes to ID_ROUTES (cross-tenant 404 test): {sorted(missing)}"


@pytest.mark.parametrize("route", ID_ROUTES, ids=lambda r: f"{r[0]} {r[1]}")
def test_other_tenant_gets_404(api, make_key, spec_dict, iris_csv, route):
    method, path, body = (*route, {})[:3]
    a, b = make_key("a"), make_key("b")
    ids = _owned(api, a, spec_dict, iris_csv)
    r = api.request(method, path.format(kind="history", **ids), headers=bearer(b), json=body if method in ("POST", "PUT") else None)
    assert r.status_code == 404, r.text
    # still there and unchanged for its owner
    assert api.get(f"/jobs/{ids['job']}", headers=bearer(a)).json()["status"] == "queued"
    assert api.get(f"/datasets/{ids['dataset']}", headers=bearer(a)).status_code == 200


def test_lists_and_counts_are_per_tenant_admin_sees_all(api, make_key, spec_dict, iris_csv):
    a, b, admin = make_key("a"), make_key("b"), make_key("ops", admin=True)
    ida, idb = _owned(api, a, spec_dict, iris_csv), _owned(api, b, spec_dict, iris_csv)
    for token, mine in ((a, ida), (b, idb)):
        jobs = api.get("/jobs", headers=bearer(token)).json()
        assert jobs["total"] == 1 and [j["id"] for j in jobs["items"]] == [mine["job"]]
        assert api.get("/jobs?status=queued", headers=bearer(token)).json()["total"] == 1
        datasets = api.get("/datasets", headers=bearer(token)).json()
        assert datasets["total"] == 1 and [d["id"] for d in datasets["items"]] == [mine["dataset"]]
    assert api.get("/jobs", headers=bearer(admin)).json()["total"] == 2
    assert api.get("/datasets", headers=bearer(admin)).json()["total"] == 2
    assert api.get(f"/jobs/{ida['job']}/trials", headers=bearer(admin)).status_code == 200
    assert api.post(f"/jobs/{idb['job']}/cancel", headers=bearer(admin)).json()["status"] == "cancelled"
    assert api.delete(f"/jobs/{idb['job']}", headers=bearer(admin)).status_code == 204


def test_spec_can_only_use_own_tenants_upload(api, make_key, spec_dict, iris_csv, settings):
    a, b = make_key("a"), make_key("b")
    ds = _upload(api, a, iris_csv).json()["id"]
    r = api.post("/jobs", json=spec_dict(dataset={"id": ds}), headers=bearer(b))
    assert r.status_code == 422 and r.json()["detail"][0]["msg"] == "dataset.id: no such dataset"
    r = api.post("/jobs", json=spec_dict(dataset={"id": ds}), headers=bearer(a))
    assert r.status_code == 201
    with session_scope(get_engine(settings.database_url)) as s:
        assert s.scalar(sa.select(Job.tenant).where(Job.id == r.json()["id"])) == "a"


# -------------------------------------------------------------------------------------------- quotas
def test_active_jobs_quota_429_with_retry_after(make_app, make_key, spec_dict):
    a, b = make_key("a"), make_key("b")
    with TestClient(make_app(quota_active_jobs=2, quota_retry_after_s=7)) as c:
        first = [c.post("/jobs", json=spec_dict(), headers=bearer(a)) for _ in range(2)]
        assert [r.status_code for r in first] == [201, 201]
        r = c.post("/jobs", json=spec_dict(), headers=bearer(a))
        assert r.status_code == 429 and r.headers["retry-after"] == "7"
        assert "TUNER_QUOTA_ACTIVE_JOBS=2" in r.json()["detail"]
        assert c.post("/jobs", json=spec_dict(), headers=bearer(b)).status_code == 201  # per tenant
        c.post(f"/jobs/{first[0].json()['id']}/cancel", headers=bearer(a))
        assert c.post("/jobs", json=spec_dict(), headers=bearer(a)).status_code == 201


def test_queued_trials_quota(make_app, make_key, spec_dict):
    a = make_key("a")
    with TestClient(make_app(quota_queued_trials=5)) as c:
        assert c.post("/jobs", json=spec_dict(), headers=bearer(a)).status_code == 201  # 3 trials
        r = c.post("/jobs", json=spec_dict(), headers=bearer(a))
        assert r.status_code == 429 and "retry-after" in r.headers
        assert "3 trials queued; 3 more would exceed the quota of 5" in r.json()["detail"]
        assert c.post("/jobs", json=spec_dict(budget={"n_trials": 2}), headers=bearer(a)).status_code == 201


def test_upload_bytes_quota(make_app, make_key, iris_csv):
    a, b = make_key("a"), make_key("b")
    quota_mb = (len(iris_csv) * 1.5) / 2**20  # room for one upload, not two
    with TestClient(make_app(quota_upload_mb=quota_mb)) as c:
        assert _upload(c, a, iris_csv).status_code == 201
        r = _upload(c, a, iris_csv)
        assert r.status_code == 413, r.text
        assert "quota" in r.json()["detail"] and "delete data sets" in r.json()["detail"]
        assert _upload(c, b, iris_csv).status_code == 201


# -------------------------------------------------------------------------- Host, CORS, cross-site POST
def test_host_header_checked(make_app):
    app = make_app()
    with TestClient(app, base_url="http://evil.example") as c:
        assert c.get("/jobs").status_code == 400  # DNS rebinding: a foreign name for 127.0.0.1
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000"):
        with TestClient(app, base_url=f"http://{host}") as c:
            assert c.get("/healthz").status_code == 200, host
    with TestClient(make_app(allowed_hosts=["tuner.internal"]), base_url="http://tuner.internal") as c:
        assert c.get("/healthz").status_code == 200


def test_no_cors_unless_configured(make_app):
    pre = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "content-type"}
    with TestClient(make_app()) as c:
        r = c.options("/jobs", headers=pre)
        assert "access-control-allow-origin" not in r.headers
        assert "access-control-allow-origin" not in c.get("/jobs", headers={"Origin": "https://evil.example"}).headers
    with TestClient(make_app(cors_origins=["https://ui.example"])) as c:
        r = c.options("/jobs", headers={**pre, "Origin": "https://ui.example"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://ui.example"
        assert "access-control-allow-origin" not in c.options("/jobs", headers=pre).headers


def test_cross_site_form_post_refused(api, spec_dict, iris_csv):
    job = api.post("/jobs", json=spec_dict()).json()["id"]
    # what a page on another site can send without a CORS preflight: forms, text/plain, body-less POST
    r = api.post("/datasets", files={"file": ("iris.csv", iris_csv)}, data={"target": "species"})
    assert r.status_code == 403 and "X-Requested-With" in r.json()["detail"]
    assert api.post(f"/jobs/{job}/cancel").status_code == 403
    assert api.post("/jobs", content=b"{}", headers={"Content-Type": "text/plain"}).status_code == 403
    assert api.post("/jobs", data={"name": "x"}).status_code == 403
    assert api.get(f"/jobs/{job}").json()["status"] == "queued"
    assert api.get("/datasets").json()["total"] == 0
    # what only a same-origin page or a real client sends: a custom header or a JSON body
    r = api.post("/datasets", files={"file": ("iris.csv", iris_csv)}, data={"target": "species"}, headers=XRW)
    assert r.status_code == 201
    assert api.post(f"/jobs/{job}/cancel", headers=XRW).json()["status"] == "cancelled"


def test_bearer_header_passes_the_post_guard(api, make_key, iris_csv):
    token = make_key("a")
    assert _upload(api, token, iris_csv).status_code == 201  # multipart + bearer, no X-Requested-With
    r = api.post("/datasets", files={"file": ("iris.csv", iris_csv)}, data={"target": "species"}, headers=XRW)
    assert r.status_code == 401  # the custom header alone does not replace the key


# ----------------------------------------------------------------------------- force (admin only)
def test_force_is_admin_only_when_keys_exist(api, make_key, spec_dict, iris_csv):
    a, admin = make_key("a"), make_key("ops", admin=True)
    ids = _owned(api, a, spec_dict, iris_csv)
    r = api.post(f"/jobs/{ids['job']}/cancel?force=true", headers=bearer(a))
    assert r.status_code == 403, r.text
    assert api.delete(f"/jobs/{ids['job']}?force=true", headers=bearer(a)).status_code == 403
    assert api.get(f"/jobs/{ids['job']}", headers=bearer(a)).json()["status"] == "queued"
    # another tenant still gets 404, not a hint that the job exists
    b = make_key("b")
    assert api.post(f"/jobs/{ids['job']}/cancel?force=true", headers=bearer(b)).status_code == 404
    # without force the owner may cancel; an admin may force
    assert api.post(f"/jobs/{ids['job']}/cancel", headers=bearer(a)).json()["status"] == "cancelled"
    assert api.delete(f"/jobs/{ids['job']}?force=true", headers=bearer(admin)).status_code == 204


def test_force_allowed_without_keys(api, spec_dict):
    r = api.post("/jobs", json=spec_dict(), headers={"X-Requested-With": "t"})
    assert r.status_code == 201, r.text
    job = r.json()["id"]
    r = api.post(f"/jobs/{job}/cancel?force=true", headers={"X-Requested-With": "t"})
    assert r.status_code == 200 and r.json()["status"] == "cancelled"


def test_concurrent_submissions_never_exceed_the_active_jobs_quota(make_app, make_key, spec_dict, monkeypatch):
    """Eight submissions at once against a quota of 2: exactly two are accepted. Each request holds its
    check open for 0.3 s before inserting its job, so without serialisation every request would count the
    same zero active jobs and all would pass (on Postgres, READ COMMITTED; SQLite's BEGIN IMMEDIATE
    serialises the write transactions anyway)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from app.api.routes import jobs as job_routes

    real = job_routes.service.create_job

    def slow_create(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.3)  # between the quota check and the INSERT: the window a racing request needs
        return real(*args, **kwargs)

    monkeypatch.setattr(job_routes.service, "create_job", slow_create)
    a = make_key("a")
    barrier = threading.Barrier(8)
    with TestClient(make_app(quota_active_jobs=2, embedded_workers=0)) as c:
        def submit(_: int) -> int:
            barrier.wait()
            return c.post("/jobs", json=spec_dict(), headers=bearer(a)).status_code

        with ThreadPoolExecutor(8) as pool:
            codes = sorted(pool.map(submit, range(8)))
        assert codes == [201, 201] + [429] * 6, codes
        assert len(c.get("/jobs", headers=bearer(a)).json()["items"]) == 2


def test_concurrent_uploads_never_exceed_the_upload_quota(make_app, make_key, iris_csv, monkeypatch):
    """Four uploads at once with room for one: exactly one is stored. Validation is slowed to 0.3 s so all
    four pass the checks made before and while streaming, and only the check in the recording transaction
    (serialised per tenant) can refuse the others."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from app.services import datasets as dataset_service

    real = dataset_service._summarise

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(dataset_service, "_summarise", slow)
    a = make_key("a")
    barrier = threading.Barrier(4)
    with TestClient(make_app(quota_upload_mb=(len(iris_csv) * 1.5) / 2**20)) as c:
        def upload(_: int) -> int:
            barrier.wait()
            return _upload(c, a, iris_csv).status_code

        with ThreadPoolExecutor(4) as pool:
            codes = sorted(pool.map(upload, range(4)))
        assert codes == [201, 413, 413, 413], codes
        assert len(c.get("/datasets", headers=bearer(a)).json()["items"]) == 1


# ------------------------------------------------------------------- headers, control characters, hosts
def test_security_headers_on_every_answer(api, make_key):
    page = api.get("/")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "default-src 'self'" in csp
    answers = [page, api.get("/jobs"), api.get("/healthz"), api.get("/jobs/nope"), api.get("/docs"),
               api.get("/web/app.js"), api.post("/jobs", content=b"x", headers={"Content-Type": "text/plain"})]
    make_key("a")
    answers.append(api.get("/jobs"))  # a 401 too
    for r in answers:
        assert r.headers["x-content-type-options"] == "nosniff", r.url
        assert r.headers["x-frame-options"] == "DENY", r.url
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"], r.url
    assert {r.status_code for r in answers} >= {200, 401, 403, 404}


def test_api_docs_are_served_from_the_installed_package(api):
    html = api.get("/docs").text
    assert "cdn" not in html.lower() and "http" not in html.replace("http-equiv", "")
    for src in ("/web/swagger/swagger-ui.css", "/web/swagger/swagger-ui-bundle.js", "/web/swagger-init.js"):
        assert src in html
        r = api.get(src)
        assert r.status_code == 200 and len(r.content) > 100, src
    assert "<script>" not in html  # no inline script: the page's CSP allows none
    assert api.get("/openapi.json").json()["openapi"].startswith("3.1")


@pytest.mark.parametrize("path", ["/jobs/a%00b", "/datasets/%00", "/jobs/x%01y/result", "/jobs/%7f/trials"])
def test_control_characters_in_a_path_are_a_plain_404(api, path):
    r = api.get(path)
    assert r.status_code == 404 and r.json() == {"detail": "not found"}
    assert api.delete(path).status_code == 404


def test_control_characters_in_a_spec_or_query_are_422_naming_the_field(api, spec_dict):
    for over, field in (({"name": "a\u0000b"}, "name"),
                        ({"search_space": {"batch_size": {"choices": [16, 32]}, "x\u0007": {"value": 1}}},
                         "search_space"),
                        ({"model": {"hidden": [8], "activation": "relu\u0000"}}, "model.activation")):
        r = api.post("/jobs", json=spec_dict(**over))
        assert r.status_code == 422, r.text
        msgs = [e["msg"] for e in r.json()["detail"]]
        assert any(m.startswith(f"{field}") and "control characters" in m for m in msgs), msgs
    r = api.get("/jobs?status=queued%00")
    assert r.status_code == 422
    assert api.get("/jobs").json()["total"] == 0  # nothing half-written


def test_testserver_is_not_a_production_default():
    from app.core.config import Settings

    assert "testserver" not in Settings.model_fields["allowed_hosts"].default


def test_unknown_ids_are_404_without_waiting_for_the_write_lock(api, settings):
    """DELETE/cancel of an id that does not exist answers from a read: it neither waits for nor holds the
    write lock (SQLite: another connection holds it; Postgres has no such lock, the answers are the same)."""
    import sqlite3
    import threading

    held = threading.Event()
    release = threading.Event()

    def hold_lock() -> None:
        conn = sqlite3.connect(settings.database_url.removeprefix("sqlite:///"), timeout=30)
        conn.execute("BEGIN IMMEDIATE")
        held.set()
        release.wait(30)
        conn.rollback()
        conn.close()

    holder = threading.Thread(target=hold_lock) if settings.is_sqlite else None
    if holder is not None:
        holder.start()
        assert held.wait(10)
    try:
        for method, path in (("DELETE", "/datasets/nope"), ("DELETE", "/jobs/nope"), ("POST", "/jobs/nope/cancel")):
            t0 = time.monotonic()
            r = api.request(method, path, headers=XRW)
            assert r.status_code == 404, (path, r.text)
            assert time.monotonic() - t0 < 2.0, path  # the busy timeout is far longer
    finally:
        release.set()
        if holder is not None:
            holder.join()
