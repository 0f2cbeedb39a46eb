"""End to end: `tuner serve` as a subprocess, a CSV upload and a small job over HTTP, on both backends."""

import pytest

pytestmark = pytest.mark.slow


def test_upload_submit_poll_succeeded(server, spec_dict, iris_csv, wait_for):
    srv = server(workers=1).start()
    with srv.client() as http:
        r = http.post("/datasets", files={"file": ("iris.csv", iris_csv)}, data={"target": "species"})
        assert r.status_code == 201, r.text
        ds = r.json()
        r = http.post("/jobs", json=spec_dict(name="e2e", dataset={"id": ds["id"]}, objective="accuracy"))
        assert r.status_code == 201, r.text
        job = wait_for(http, r.json()["id"], lambda j: j["status"] in ("succeeded", "failed", "cancelled"))
        assert job["status"] == "succeeded", job
        assert job["progress"]["counted"] == 3 and job["progress"]["running"] == 0
        assert 0.0 <= job["test_metrics"]["accuracy"] <= 1.0 and job["test_metrics"]["n_test"] == 30
        assert job["best_trial"]["params"]["batch_size"] in (16, 32)
        trials = http.get(f"/jobs/{job['id']}/trials").json()
        assert trials["total"] == 3
        assert all(t["state"] == "complete" and t["worker"] and t["val_curve"] for t in trials["items"])
    assert srv.stop() == 0  # SIGTERM: API and workers stop cleanly
