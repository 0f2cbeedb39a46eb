"""``/jobs`` over HTTP: success and error paths on both backends."""

import sqlalchemy as sa

from app.db import get_engine, make_storage
from app.models import Job


def _set_status(settings, job_id, **values):
    with get_engine(settings.database_url).begin() as conn:
        conn.execute(sa.update(Job).where(Job.id == job_id).values(**values))


def _live_worker(settings):
    """A worker heartbeat row: with no live worker, running jobs are cancelled/deleted at once."""
    from app.liveness import worker_beat

    worker_beat(get_engine(settings.database_url), "alive:1", None)


def test_submit_returns_201_location_and_queued_job(client, spec_dict):
    r = client.post("/jobs", json=spec_dict())
    assert r.status_code == 201
    body = r.json()
    assert r.headers["location"] == f"/jobs/{body['id']}"
    assert body["status"] == "queued" and body["n_trials"] == 3
    assert body["progress"] == {"n_trials": 3, "complete": 0, "pruned": 0, "failed": 0, "config_failed": 0,
                                "running": 0, "waiting": 0, "counted": 0}
    assert client.get(r.headers["location"]).json()["id"] == body["id"]


def test_submit_bad_spec_has_field_messages(client, spec_dict):
    r = client.post("/jobs", json=spec_dict(budget={"n_trials": 0}, model={"hidden": [8], "bogus": 1}))
    assert r.status_code == 422
    msgs = {e["msg"] for e in r.json()["detail"]}
    assert "budget.n_trials: must be at least 1" in msgs
    assert "model.bogus: unknown field" in msgs
    locs = [e["loc"] for e in r.json()["detail"]]
    assert ["body", "budget", "n_trials"] in locs


def test_submit_model_validator_errors_are_split_by_field(client, spec_dict):
    r = client.post("/jobs", json=spec_dict(objective="mae", search_space={"foo": {"value": 1}}))
    assert r.status_code == 422
    detail = r.json()["detail"]
    by_loc = {tuple(e["loc"]): e["msg"] for e in detail}
    assert by_loc[("body", "search_space", "foo")].startswith("search_space.foo: unknown hyperparameter")
    assert by_loc[("body", "objective")].startswith("objective: 'mae' needs a regression task")


def test_submit_server_path_refused(client, spec_dict):
    for ds in ({"path": "/etc/data.csv"}, {"path": "/etc/data.csv", "target": "y"}, {"path": "/x.npz"}):
        r = client.post("/jobs", json=spec_dict(dataset=ds))
        assert r.status_code == 422
        assert r.json()["detail"][0] == {
            "loc": ["body", "dataset", "path"], "type": "value_error",
            "msg": "dataset.path: server file paths are not accepted; upload the file with POST /datasets",
        }


def test_submit_unknown_dataset_id(client, spec_dict):
    r = client.post("/jobs", json=spec_dict(dataset={"id": "nope"}))
    assert r.status_code == 422
    assert r.json()["detail"][0]["msg"] == "dataset.id: no such dataset"


def test_submit_with_upload_checks_objective_target_and_nan(client, spec_dict, upload, iris_csv):
    ds = upload(iris_csv, target="species").json()
    r = client.post("/jobs", json=spec_dict(dataset={"id": ds["id"]}, objective="r2"))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "objective"]
    r = client.post("/jobs", json=spec_dict(dataset={"id": ds["id"], "target": "other"}))
    assert r.status_code == 422 and r.json()["detail"][0]["msg"].startswith("dataset.target:")
    r = client.post("/jobs", json=spec_dict(dataset={"id": ds["id"]}, objective="accuracy"))
    assert r.status_code == 201
    job = r.json()
    assert job["dataset_id"] == ds["id"]
    # the target is pinned; the task is not (the engine infers it from the non-test rows, issue 19)
    assert job["spec"]["dataset"] == {**job["spec"]["dataset"], "target": "species", "task": None}
    nan_csv = iris_csv.replace(b"5.1,", b",", 1)
    ds2 = upload(nan_csv, target="species", allow_nan="true").json()
    r = client.post("/jobs", json=spec_dict(dataset={"id": ds2["id"]}))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "dataset", "impute"]
    assert client.post("/jobs", json=spec_dict(dataset={"id": ds2["id"], "impute": "mean"})).status_code == 201


def test_list_newest_first_paginated_and_filtered(client, spec_dict, settings):
    ids = [client.post("/jobs", json=spec_dict(name=f"j{i}")).json()["id"] for i in range(3)]
    r = client.get("/jobs", params={"limit": 2})
    body = r.json()
    assert body["total"] == 3 and [j["id"] for j in body["items"]] == ids[::-1][:2]
    assert [j["id"] for j in client.get("/jobs", params={"limit": 2, "offset": 2}).json()["items"]] == [ids[0]]
    _set_status(settings, ids[1], status="failed")
    r = client.get("/jobs", params={"status": "failed"}).json()
    assert [j["id"] for j in r["items"]] == [ids[1]] and r["total"] == 1
    assert client.get("/jobs", params={"status": "bogus"}).status_code == 422
    assert client.get("/jobs", params={"limit": 0}).status_code == 422
    assert client.get("/jobs", params={"offset": -1}).status_code == 422


def test_unknown_job_is_404(client):
    for method, path in (("get", "/jobs/x"), ("get", "/jobs/x/trials"), ("post", "/jobs/x/cancel"),
                         ("delete", "/jobs/x")):
        r = getattr(client, method)(path)
        assert r.status_code == 404 and r.json() == {"detail": "no job with id x"}


def test_trials_and_progress_from_the_study(client, spec_dict, settings):
    from app.worker import Worker

    job = client.post("/jobs", json=spec_dict(budget={"n_trials": 2})).json()
    w = Worker(settings)
    for _ in range(10):
        w.run_once()
        if client.get(f"/jobs/{job['id']}").json()["status"] == "succeeded":
            break
    detail = client.get(f"/jobs/{job['id']}").json()
    assert detail["status"] == "succeeded"
    assert detail["progress"]["complete"] == 2 and detail["progress"]["counted"] == 2
    assert set(detail["best_trial"]) == {"number", "params", "value", "best_epoch"}
    assert "accuracy" in detail["test_metrics"]
    page = client.get(f"/jobs/{job['id']}/trials", params={"limit": 1, "offset": 1}).json()
    assert page["total"] == 2 and [t["number"] for t in page["items"]] == [1]
    t = page["items"][0]
    assert t["state"] == "complete" and t["worker"] == w.worker_id and t["duration_s"] > 0
    assert len(t["intermediate_values"]) == len(t["val_curve"]) >= 1
    assert client.get(f"/jobs/{job['id']}/trials", params={"limit": 0}).status_code == 422


def test_cancel_queued_running_and_finished(client, spec_dict, settings):
    _live_worker(settings)
    queued = client.post("/jobs", json=spec_dict()).json()
    r = client.post(f"/jobs/{queued['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["finished_at"]
    assert client.post(f"/jobs/{queued['id']}/cancel").status_code == 409

    running = client.post("/jobs", json=spec_dict()).json()
    _set_status(settings, running["id"], status="running")
    r = client.post(f"/jobs/{running['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "running" and r.json()["cancel_requested"] is True

    done = client.post("/jobs", json=spec_dict()).json()
    _set_status(settings, done["id"], status="succeeded")
    r = client.post(f"/jobs/{done['id']}/cancel")
    assert r.status_code == 409 and "succeeded" in r.json()["detail"]


def test_delete_removes_job_study_and_artifacts(client, spec_dict, settings):
    import optuna

    job = client.post("/jobs", json=spec_dict()).json()
    storage = make_storage(settings.database_url)
    optuna.create_study(study_name=job["study_name"], storage=storage)
    art = settings.artifacts_dir / job["study_name"]
    art.mkdir(parents=True)
    (art / "best-model.pt").write_bytes(b"x")

    _live_worker(settings)
    _set_status(settings, job["id"], status="running")
    assert client.delete(f"/jobs/{job['id']}").status_code == 409
    _set_status(settings, job["id"], status="finalizing")
    assert client.delete(f"/jobs/{job['id']}").status_code == 409
    _set_status(settings, job["id"], status="succeeded")
    assert client.delete(f"/jobs/{job['id']}").status_code == 204
    assert client.get(f"/jobs/{job['id']}").status_code == 404
    assert job["study_name"] not in optuna.get_all_study_names(storage)
    assert not art.exists()
    # a queued job (never opened a study) deletes too
    q = client.post("/jobs", json=spec_dict()).json()
    assert client.delete(f"/jobs/{q['id']}").status_code == 204
