"""``GET /jobs/{id}``: ETag / 304, long-poll ``?wait=S`` and the ``/events`` stream, on both backends."""

import json
import threading
import time

import sqlalchemy as sa

from app.db import get_engine
from app.models import Job


def _bump(settings, job_id, **values):
    with get_engine(settings.database_url).begin() as conn:
        conn.execute(sa.update(Job).where(Job.id == job_id).values(version=Job.version + 1, **values))


def _later(delay, fn, *args, **kwargs):
    t = threading.Timer(delay, fn, args, kwargs)
    t.start()
    return t


def test_etag_and_304(client, spec_dict, settings):
    job_id = client.post("/jobs", json=spec_dict()).json()["id"]
    r = client.get(f"/jobs/{job_id}")
    etag = r.headers["etag"]
    assert r.status_code == 200 and r.json()["version"] == 0 and etag.startswith(f'"{job_id}-0')
    r = client.get(f"/jobs/{job_id}", headers={"If-None-Match": etag})
    assert r.status_code == 304 and r.headers["etag"] == etag and r.content == b""
    assert client.get(f"/jobs/{job_id}", headers={"If-None-Match": f'"other", W/{etag}'}).status_code == 304
    _bump(settings, job_id, progress={"complete": 1, "counted": 1})
    r = client.get(f"/jobs/{job_id}", headers={"If-None-Match": etag})
    assert r.status_code == 200 and r.headers["etag"] != etag
    assert r.json()["progress"]["complete"] == 1 and r.json()["version"] == 1
    # cancelling changes the ETag too (and a status change without a version bump would as well)
    etag = r.headers["etag"]
    client.post(f"/jobs/{job_id}/cancel")
    assert client.get(f"/jobs/{job_id}", headers={"If-None-Match": etag}).status_code == 200
    assert client.get("/jobs/nope", headers={"If-None-Match": etag}).status_code == 404


def test_long_poll_returns_early_on_change(client, spec_dict, settings):
    job_id = client.post("/jobs", json=spec_dict()).json()["id"]
    etag = client.get(f"/jobs/{job_id}").headers["etag"]
    timer = _later(0.5, _bump, settings, job_id, progress={"complete": 2, "counted": 2})
    t0 = time.monotonic()
    r = client.get(f"/jobs/{job_id}", params={"wait": 30}, headers={"If-None-Match": etag})
    waited = time.monotonic() - t0
    timer.join()
    assert r.status_code == 200 and r.json()["progress"]["complete"] == 2 and r.headers["etag"] != etag
    assert 0.4 < waited < 20  # answered on the change, long before the 30 s


def test_long_poll_times_out_with_304(client, spec_dict):
    job_id = client.post("/jobs", json=spec_dict()).json()["id"]
    etag = client.get(f"/jobs/{job_id}").headers["etag"]
    t0 = time.monotonic()
    r = client.get(f"/jobs/{job_id}", params={"wait": 1}, headers={"If-None-Match": etag})
    assert r.status_code == 304 and r.headers["etag"] == etag and time.monotonic() - t0 >= 0.9
    # without If-None-Match there is nothing to wait for: the job at once
    assert client.get(f"/jobs/{job_id}", params={"wait": 30}).status_code == 200
    r = client.get(f"/jobs/{job_id}", params={"wait": 61})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "wait"]


def test_many_waiters_share_one_watcher_and_hold_no_connection(client, spec_dict, settings):
    job_id = client.post("/jobs", json=spec_dict()).json()["id"]
    etag = client.get(f"/jobs/{job_id}").headers["etag"]
    results: list[int] = []

    def wait() -> None:
        results.append(client.get(f"/jobs/{job_id}", params={"wait": 20},
                                  headers={"If-None-Match": etag}).status_code)

    threads = [threading.Thread(target=wait) for _ in range(8)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(1.0)
    pool = get_engine(settings.database_url).pool
    checked_out = []
    for _ in range(10):
        checked_out.append(pool.checkedout())
        time.sleep(0.05)
    _bump(settings, job_id)
    for t in threads:
        t.join(timeout=30)
    elapsed = time.monotonic() - t0
    assert results == [200] * 8
    assert min(checked_out) == 0  # nobody holds a connection while waiting (the watcher only per query)
    watcher = client.app.state.job_watcher
    # one query per interval for all eight waiters, not one per waiter
    assert watcher.polls <= elapsed / watcher.interval + 3


def _events(lines):
    event, out = None, []
    for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            out.append((event, json.loads(line[6:])))
            if event == "finished":
                return out
    return out


def test_events_stream_progress_best_and_finished(client, spec_dict, settings):
    job_id = client.post("/jobs", json=spec_dict()).json()["id"]
    best = {"number": 0, "params": {"lr": 0.01}, "value": 0.5, "best_epoch": 2}
    timers = [
        _later(0.4, _bump, settings, job_id, status="running", progress={"running": 1}),
        _later(0.9, _bump, settings, job_id, progress={"complete": 1, "counted": 1}, best_trial=best),
        _later(1.4, _bump, settings, job_id, status="succeeded", test_metrics={"accuracy": 1.0}),
    ]
    with client.stream("GET", f"/jobs/{job_id}/events") as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = _events(r.iter_lines())
    for t in timers:
        t.join()
    kinds = [e for e, _ in events]
    assert kinds[0] == "progress" and events[0][1]["status"] == "queued" and "spec" not in events[0][1]
    assert ("best", best) in events
    assert kinds[-1] == "finished" and events[-1][1]["test_metrics"] == {"accuracy": 1.0}
    assert "running" in [d["status"] for e, d in events if e == "progress"]
    assert client.get("/jobs/nope/events").status_code == 404
