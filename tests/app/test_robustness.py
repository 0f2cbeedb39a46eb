"""Issue 8, the worker side: poison pills, memory errors, blips, dead workers, stuck jobs (in-process)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

import app.worker as worker_mod
import tuner.objective as objective_mod
from app.db import get_engine, make_storage, release_slot, session_scope
from app.models import Job, SlotRelease, WorkerRow, utcnow
from app.services.jobs import create_job
from app.services.tenancy import ANONYMOUS
from app.worker import Worker
from tuner.runner import trial_counts
from tuner.spec import JobSpec

FINISHED = ("succeeded", "failed", "cancelled")


@pytest.fixture
def submit(settings, spec_dict):
    def do(**over):
        with session_scope(get_engine(settings.database_url), write=True) as s:
            return create_job(s, JobSpec.model_validate(spec_dict(**over)), principal=ANONYMOUS).id

    return do


def _job(settings, job_id) -> Job:
    with session_scope(get_engine(settings.database_url)) as s:
        return s.get(Job, job_id)


def _update(settings, job_id, **values):
    with session_scope(get_engine(settings.database_url), write=True) as s:
        s.execute(sa.update(Job).where(Job.id == job_id).values(**values))


def _drain(worker, settings, job_ids, steps=40):
    for _ in range(steps):
        worker._last_maintenance = 0.0  # maintenance (which retries a failed finalisation) every step
        worker.run_once()  # must never raise
        if all(_job(settings, j).status in FINISHED for j in job_ids):
            break
    return [_job(settings, j) for j in job_ids]


def _add_worker_row(settings, wid="alive:1", age_s=0.0, **kw):
    with session_scope(get_engine(settings.database_url), write=True) as s:
        at = utcnow() - timedelta(seconds=age_s)
        s.add(WorkerRow(id=wid, host="h", pid=1, started_at=at, heartbeat_at=at, **kw))


# ----------------------------------------------------------------------------------------- poison pill
def _fail_first(monkeypatch, module, name: str, times: int) -> list[int]:
    """Replace ``module.name`` by a wrapper whose first ``times`` calls raise MemoryError; returns the calls."""
    real, calls = getattr(module, name), []

    def flaky(*a, **kw):
        calls.append(1)
        if len(calls) <= times:
            raise MemoryError()
        return real(*a, **kw)

    monkeypatch.setattr(module, name, flaky)
    return calls


def test_poison_pill_fails_its_job_and_the_worker_goes_on(settings, submit):
    """timeout_s = 1e12 (stored directly, past any bound at the door) made ``_start`` raise OverflowError."""
    poison = submit(name="poison")
    with session_scope(get_engine(settings.database_url), write=True) as s:
        job = s.get(Job, poison)
        job.spec = {**job.spec, "budget": {**job.spec["budget"], "timeout_s": 1e12}}
    good = submit(name="good", budget={"n_trials": 2})
    w = Worker(settings)
    bad_job, good_job = _drain(w, settings, [poison, good])
    assert bad_job.status == "failed" and bad_job.failures == settings.job_max_failures == 3
    assert "OverflowError" in bad_job.error and "starting the job" in bad_job.error
    assert good_job.status == "succeeded" and good_job.failures == 0


def test_memory_error_while_loading_data_is_bounded(settings, submit, monkeypatch):
    calls = []

    def boom(spec, **kw):
        calls.append(spec.name)
        raise MemoryError()

    bad = submit(name="bad")
    monkeypatch.setattr(worker_mod, "prepare_data", boom)
    w = Worker(settings)
    (job,) = _drain(w, settings, [bad])
    assert job.status == "failed" and job.failures == 3 and len(calls) == 3
    assert "loading the data: MemoryError" in job.error


def test_worker_killed_while_loading_data_counts_as_a_failure(settings, submit):
    job_id = submit()
    _add_worker_row(settings, "dead:1", age_s=settings.grace_period + 5, current_job=job_id, phase="preparing")
    _add_worker_row(settings, "idle-dead:2", age_s=settings.grace_period + 5)
    _add_worker_row(settings, "alive:3")
    Worker(settings).maintain()
    job = _job(settings, job_id)
    assert job.failures == 1 and "died while loading the data" in job.last_error and job.status == "queued"
    with session_scope(get_engine(settings.database_url)) as s:
        assert s.scalars(sa.select(WorkerRow.id)).all() == ["alive:3"]


@pytest.mark.parametrize("fail_times", [1, 5])
def test_finalisation_errors_are_retried_a_bounded_number_of_times(settings, submit, monkeypatch, fail_times):
    calls = _fail_first(monkeypatch, worker_mod, "finalize", fail_times)
    job_id = submit(budget={"n_trials": 1})
    (job,) = _drain(Worker(settings), settings, [job_id])
    if fail_times < settings.job_max_failures:
        assert job.status == "succeeded" and job.failures == fail_times and len(calls) == fail_times + 1
    else:
        assert job.status == "failed" and job.failures == 3 and len(calls) == 3
        assert "finalisation: MemoryError" in job.error


def test_finalising_worker_that_died_counts_and_ends_the_job_after_the_bound(settings, submit):
    job_id = submit(budget={"n_trials": 1})
    old = utcnow() - timedelta(seconds=settings.grace_period + 5)
    _update(settings, job_id, status="finalizing", finalized_by="gone:1", heartbeat_at=old, failures=2)
    Worker(settings).recover()
    job = _job(settings, job_id)
    assert job.status == "failed" and job.failures == 3 and "gone:1 stopped responding" in job.error


def test_memory_error_in_a_trial_is_a_configuration_failure(settings, submit, monkeypatch):
    _fail_first(monkeypatch, objective_mod, "fit", 1)
    job_id = submit(budget={"n_trials": 3})
    w = Worker(settings)
    (job,) = _drain(w, settings, [job_id])
    assert job.status == "succeeded" and job.failures == 0
    study = optuna.load_study(study_name=job.study_name, storage=w.storage)
    counts = trial_counts(study)
    assert counts.config_failed == 1 and counts.counted == 3
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed[0].user_attrs["fail_reason"] == "out of memory: MemoryError"


# -------------------------------------------------------------------------------------------- blips
def test_heartbeat_survives_a_failed_write(settings, monkeypatch):
    storage = make_storage(settings.database_url, heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(storage=storage, study_name="hb")
    trial = study.ask()
    real = optuna.storages.RDBStorage.record_heartbeat
    fails = {"n": 2}

    def flaky(self, trial_id):
        if fails["n"] > 0:
            fails["n"] -= 1
            raise optuna.exceptions.StorageInternalError("injected")
        return real(self, trial_id)

    monkeypatch.setattr(optuna.storages.RDBStorage, "record_heartbeat", flaky)
    storage.record_heartbeat(trial._trial_id)  # retried within the call, never raises
    assert fails["n"] == 0
    fails["n"] = 10_000
    storage.record_heartbeat(trial._trial_id)  # a long outage: gives up quietly until the next beat


def test_release_of_one_trial_is_idempotent_under_a_race(settings, submit):
    job_id = submit(budget={"n_trials": 3})
    _update(settings, job_id, status="running", trials_claimed=3)
    engine = get_engine(settings.database_url)
    n = 4
    barrier = threading.Barrier(n)
    results: list[bool] = []

    def release():
        barrier.wait()
        results.append(release_slot(engine, job_id=job_id, trial_id=7))

    threads = [threading.Thread(target=release) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * (n - 1) + [True]
    assert _job(settings, job_id).trials_claimed == 2
    with session_scope(engine) as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(SlotRelease)) == 1


def _slow_epochs(monkeypatch, seconds):
    """Each epoch takes at least ``seconds`` (trials long enough to outlive the grace period)."""
    real = objective_mod.fit

    def fit(*a, **kw):
        on_epoch = kw.get("on_epoch")

        def slow(epoch, value):
            time.sleep(seconds)
            if on_epoch is not None:
                on_epoch(epoch, value)

        kw["on_epoch"] = slow
        return real(*a, **kw)

    monkeypatch.setattr(objective_mod, "fit", fit)


@pytest.mark.parametrize("outage_s", [0.0, 2.0], ids=["blip", "outage"])
def test_heartbeat_failures_with_two_workers_job_succeeds_exactly(settings, submit, monkeypatch, outage_s):
    """One injected StorageInternalError in worker A's heartbeat (blip), or failing writes for longer than
    the grace period (outage: B fails A's trial as stale and re-queues it; A abandons only that trial).

    B starts once A's trial has gone without a heartbeat for longer than the grace period, so B's first
    maintenance sees a stale trial if A's heartbeat thread died (as Optuna's own thread does)."""
    n_trials = 3
    _slow_epochs(monkeypatch, 0.5)
    job_id = submit(budget={"n_trials": n_trials, "max_epochs": 10, "timeout_s": 300},
                    early_stopping={"patience": 10})
    a, b = Worker(settings, worker_id="host:a"), Worker(settings, worker_id="host:b")
    real = optuna.storages.RDBStorage.record_heartbeat  # Optuna's own
    state = {"calls": 0, "until": 0.0}

    def flaky(self, trial_id):
        if self is a.storage:
            state["calls"] += 1
            now = time.monotonic()
            if state["calls"] == 2:  # the first beat wrote the heartbeat row; the second one fails
                state["until"] = now + outage_s + (settings.grace_period + 1.5 if outage_s else 0)
                raise optuna.exceptions.StorageInternalError("injected blip")
            if now < state["until"]:
                raise optuna.exceptions.StorageInternalError("injected outage")
        return real(self, trial_id)

    monkeypatch.setattr(optuna.storages.RDBStorage, "record_heartbeat", flaky)
    errors: list[BaseException] = []

    def run(w):
        try:
            w.run()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in (a, b)]
    threads[0].start()
    deadline = time.monotonic() + 90
    try:
        while state["calls"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(settings.grace_period + 1.5)
        threads[1].start()
        while _job(settings, job_id).status not in FINISHED and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        a.request_stop()
        b.request_stop()
        for t in threads:
            if t.is_alive() or t.ident is not None:
                t.join(timeout=30)
    assert not errors
    job = _job(settings, job_id)
    assert job.status == "succeeded" and job.failures == 0, (job.status, job.error, job.last_error)
    study = optuna.load_study(study_name=job.study_name, storage=a.storage)
    counts = trial_counts(study)
    assert counts.counted == n_trials == counts.complete and counts.running == 0
    assert job.trials_claimed == n_trials
    stale = [t for t in study.trials if t.state == TrialState.FAIL]
    if outage_s:
        assert stale and all(t.user_attrs.get("worker") == "host:a" for t in stale)
    else:
        assert stale == []  # the heartbeat thread retried: A's trial never went stale


# --------------------------------------------------------------------------------------- stuck jobs
def test_stuck_running_job_with_no_live_worker_is_cancelled_and_deleted_at_once(client, settings, spec_dict):
    job = client.post("/jobs", json=spec_dict()).json()
    storage = make_storage(settings.database_url)
    study = optuna.create_study(study_name=job["study_name"], storage=storage)
    study.ask()  # a trial its (dead) worker left running
    _update(settings, job["id"], status="running")
    _add_worker_row(settings, "dead:1", age_s=settings.grace_period + 5)
    r = client.post(f"/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL]

    left = client.post("/jobs", json=spec_dict()).json()
    _update(settings, left["id"], status="finalizing")
    assert client.delete(f"/jobs/{left['id']}").status_code == 204


def test_force_cancel_and_delete_while_a_worker_is_alive(client, settings, spec_dict):
    _add_worker_row(settings, "alive:1")
    job = client.post("/jobs", json=spec_dict()).json()
    _update(settings, job["id"], status="finalizing")
    r = client.post(f"/jobs/{job['id']}/cancel")
    assert r.status_code == 409 and "force=true" in r.json()["detail"]
    assert client.delete(f"/jobs/{job['id']}").status_code == 409
    r = client.post(f"/jobs/{job['id']}/cancel", params={"force": "true"})
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    other = client.post("/jobs", json=spec_dict()).json()
    _update(settings, other["id"], status="running")
    assert client.delete(f"/jobs/{other['id']}", params={"force": "true"}).status_code == 204
    assert client.get(f"/jobs/{other['id']}").status_code == 404


def test_readyz_reports_workers_alive_and_queue_depth(client, settings, spec_dict):
    assert client.get("/readyz").json() | {"revision": None} == {
        "status": "ready", "revision": None, "workers_alive": 0, "queue_depth": 0}
    ids = [client.post("/jobs", json=spec_dict()).json()["id"] for _ in range(3)]
    _update(settings, ids[1], status="running", trials_claimed=3)  # every slot taken
    _update(settings, ids[2], status="running", trials_claimed=1)
    _add_worker_row(settings, "alive:1")
    _add_worker_row(settings, "dead:1", age_s=settings.grace_period + 5)
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["workers_alive"] == 1 and r.json()["queue_depth"] == 2


def test_maintenance_looks_at_every_running_job(settings, submit):
    ids = [submit(name=f"j{i}") for i in range(worker_mod.MAINTENANCE_PAGE + 5)]
    with session_scope(get_engine(settings.database_url), write=True) as s:
        s.execute(sa.update(Job).values(status="running", cancel_requested=True))
    Worker(settings).maintain()
    with session_scope(get_engine(settings.database_url)) as s:
        statuses = set(s.scalars(sa.select(Job.status).where(Job.id.in_(ids))))
    assert statuses == {"cancelled"}


def test_job_failures_and_last_error_are_shown_by_the_api_and_change_its_etag(settings, submit, monkeypatch):
    """A job that failed once and recovered says so (``failures``, ``last_error``), and counting a failure
    changes the ETag, so a poller with If-None-Match sees it."""
    from fastapi.testclient import TestClient

    from app.liveness import count_failure
    from app.main import create_app

    _fail_first(monkeypatch, worker_mod, "finalize", 1)
    job_id = submit(budget={"n_trials": 1})
    with TestClient(create_app(settings.model_copy(update={"embedded_workers": 0}))) as c:
        fresh = c.get(f"/jobs/{job_id}")
        assert fresh.json()["failures"] == 0 and fresh.json()["last_error"] is None
        with session_scope(get_engine(settings.database_url), write=True) as s:
            count_failure(s, job_id, "start: a test failure", settings.job_max_failures)
        r = c.get(f"/jobs/{job_id}", headers={"If-None-Match": fresh.headers["etag"]})
        assert r.status_code == 200 and r.json()["failures"] == 1
        assert r.json()["last_error"] == "start: a test failure"
        _drain(Worker(settings), settings, [job_id])
        body = c.get(f"/jobs/{job_id}").json()
        assert body["status"] == "succeeded" and body["failures"] == 2
        assert "MemoryError" in body["last_error"] and body["error"] is None
