"""``GET /metrics``: names and values after a small job (figures read from the database at scrape time)."""

import optuna
from prometheus_client.parser import text_string_to_metric_families

from app.db import make_storage
from app.worker import Worker


def _samples(client):
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(r.text) for s in fam.samples}


def test_metrics_after_a_small_job(client, spec_dict, settings):
    before = _samples(client)
    assert before[("tuneserve_jobs", (("status", "queued"),))] == 0
    job_id = client.post("/jobs", json=spec_dict(budget={"n_trials": 3, "max_epochs": 3})).json()["id"]
    s = _samples(client)
    assert s[("tuneserve_jobs", (("status", "queued"),))] == 1 and s[("tuneserve_queue_depth", ())] == 1
    assert s[("tuneserve_trial_slots_pending", ())] == 3
    w = Worker(settings)
    for _ in range(20):
        w.run_once()
        if client.get(f"/jobs/{job_id}").json()["status"] == "succeeded":
            break
    s = _samples(client)
    assert s[("tuneserve_jobs", (("status", "succeeded"),))] == 1
    assert s[("tuneserve_jobs", (("status", "queued"),))] == 0 and s[("tuneserve_queue_depth", ())] == 0
    assert s[("tuneserve_trials", (("state", "complete"),))] == 3
    assert s[("tuneserve_trials", (("state", "running"),))] == 0
    for cause in ("config", "interrupted", "other"):
        assert s[("tuneserve_failed_trials", (("cause", cause),))] == 0
    assert s[("tuneserve_trial_duration_seconds_count", ())] == 3
    assert s[("tuneserve_trial_duration_seconds_sum", ())] > 0
    assert s[("tuneserve_trial_epochs_count", ())] == 3
    assert s[("tuneserve_trial_epochs_sum", ())] == 9  # 3 epochs each (patience 3 never stops them)
    assert s[("tuneserve_trial_epochs_bucket", (("le", "3.0"),))] == 3
    assert s[("tuneserve_trial_epochs_bucket", (("le", "2.0"),))] == 0
    assert s[("tuneserve_workers_alive", ())] == 0
    # latency by route template, never by raw path
    routes = {dict(k[1]).get("route") for k in s if k[0] == "tuneserve_http_request_duration_seconds_count"}
    assert {"/jobs", "/jobs/{job_id}", "/metrics"} <= routes
    assert not any(job_id in (r or "") for r in routes)
    key = ("tuneserve_http_request_duration_seconds_count",
           (("method", "GET"), ("route", "/jobs/{job_id}"), ("status", "200")))
    assert s[key] >= 1


def test_workers_alive_counts_fresh_heartbeats_of_running_trials(client, settings):
    storage = make_storage(settings.database_url, heartbeat_interval=1, grace_period=30)
    study = optuna.create_study(study_name="hb", storage=storage)
    for worker in ("host-a:1", "host-a:1", "host-b:2"):
        trial = study.ask()
        trial.set_user_attr("worker", worker)
        storage.record_heartbeat(trial._trial_id)
    s = _samples(client)
    assert s[("tuneserve_workers_alive", ())] == 2
    assert s[("tuneserve_trials", (("state", "running"),))] == 3
