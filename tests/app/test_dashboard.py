"""optuna-dashboard mounted at /dashboard: every job's study listed, read-only."""

from app.worker import Worker


def test_dashboard_lists_the_job_study_and_refuses_writes(client, spec_dict, settings):
    job = client.post("/jobs", json=spec_dict(budget={"n_trials": 1})).json()
    Worker(settings).run_once()  # opens the study and runs its trial

    r = client.get("/dashboard/api/studies")
    assert r.status_code == 200, r.text
    studies = {s["study_name"]: s for s in r.json()["study_summaries"]}
    assert job["study_name"] in studies
    sid = studies[job["study_name"]]["study_id"]
    detail = client.get(f"/dashboard/api/studies/{sid}", params={"after": 0})
    assert detail.status_code == 200 and len(detail.json()["trials"]) == 1

    page = client.get("/dashboard/studies/1")
    assert page.status_code == 200 and '/dashboard/static/bundle.js' in page.text
    assert client.get("/dashboard/static/bundle.js").status_code == 200
    assert "/dashboard" in client.get("/web/dashboard-prefix.js").text
    csv = client.get(f"/dashboard/csv/{sid}")
    assert csv.status_code == 200 and "Number" in csv.text.splitlines()[0]

    for method, path in [("POST", "/dashboard/api/studies"), ("DELETE", f"/dashboard/api/studies/{sid}"),
                         ("POST", f"/dashboard/api/studies/{sid}/rename"), ("PUT", f"/dashboard/api/studies/{sid}/note"),
                         ("POST", "/dashboard/incompatible-rdb-schema")]:
        r = client.request(method, path, json={"study_name": "x", "directions": ["minimize"]})
        assert r.status_code == 403, (method, path, r.text)
        assert r.json()["detail"].startswith("the dashboard is read-only")
    names = {s["study_name"] for s in client.get("/dashboard/api/studies").json()["study_summaries"]}
    assert names == {job["study_name"]}


def test_dashboard_static_files_without_accept_encoding(client):
    """optuna-dashboard's static route reads Accept-Encoding unguarded (a KeyError, an HTML 500, without it)."""
    client.headers.pop("accept-encoding", None)
    for path in ("/dashboard/static/bundle.js", "/dashboard/favicon.ico"):
        r = client.get(path)
        assert r.status_code == 200, (path, r.text[:200])
        assert r.headers.get("content-encoding") in (None, "identity")
    r = client.get("/dashboard/static/bundle.js", headers={"Accept-Encoding": "gzip"})
    assert r.status_code == 200
