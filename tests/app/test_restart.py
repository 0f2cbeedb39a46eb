"""Restart safety: SIGKILL the whole server mid-job, start it again, the job finishes exactly."""

import pytest

pytestmark = pytest.mark.slow


def test_killed_mid_job_resumes_with_exact_budget(server, spec_dict, wait_for):
    spec = spec_dict(
        name="restart", dataset={"builtin": "digits"}, model={"hidden": [32]},
        # batch 4, no pruning: every trial trains 15 full epochs (seconds), so the trial seen running when the
        # poll returns is still running when the kill lands a moment later (at batch 16 a trial took 0.4 s and
        # could finish in between under load, leaving no trial to fail)
        search_space={"lr": {"low": 1e-3, "high": 1e-2, "log": True}, "batch_size": {"value": 4}},
        budget={"n_trials": 4, "max_epochs": 15, "timeout_s": 300}, early_stopping={"patience": 15},
    )
    first = server(workers=1).start()
    with first.client() as http:
        job_id = http.post("/jobs", json=spec).json()["id"]
        wait_for(http, job_id, lambda j: j["progress"]["complete"] >= 1 and j["progress"]["running"] >= 1)
    first.kill()

    second = server(workers=1).start()
    with second.client() as http:
        job = wait_for(http, job_id, lambda j: j["status"] in ("succeeded", "failed", "cancelled"), timeout=150)
        assert job["status"] == "succeeded", job
        p = job["progress"]
        assert p["counted"] == p["complete"] + p["pruned"] + p["config_failed"] == 4
        assert p["running"] == 0 and p["failed"] >= 1  # the trial killed mid-way, failed by its heartbeat
        assert job["test_metrics"]["n_test"] > 0
        trials = http.get(f"/jobs/{job_id}/trials").json()["items"]
        assert len({t["worker"] for t in trials if t["worker"]}) == 2  # before and after the restart
        assert any(t["retry_of"] is not None for t in trials)  # the killed trial was re-run
    assert second.stop() == 0
