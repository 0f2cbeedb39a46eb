"""The worker in-process: trial slots, exact n_trials, finalise once, cancel, failures, recovery."""

import time
from datetime import timedelta

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from app.db import get_engine, session_scope
from app.models import Job, utcnow
from app.services.jobs import create_job
from app.services.tenancy import ANONYMOUS
from app.worker import Worker
from tuner.runner import optimize, trial_counts
from tuner.spec import JobSpec


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


def _drain(worker, settings, job_id, until=("succeeded", "failed", "cancelled"), steps=30):
    for _ in range(steps):
        worker.run_once()
        if _job(settings, job_id).status in until:
            break
    return _job(settings, job_id)


def test_runs_exactly_n_trials_and_finalises_once(settings, submit):
    job_id = submit(budget={"n_trials": 3})
    w = Worker(settings)
    job = _drain(w, settings, job_id)
    assert job.status == "succeeded" and job.trials_claimed == 3 and job.finalized_by == w.worker_id
    assert job.started_at and job.finished_at and job.deadline and "accuracy" in job.test_metrics
    study = optuna.load_study(study_name=job.study_name, storage=w.storage)
    assert trial_counts(study).counted == 3 and len(study.trials) == 3
    assert {t.user_attrs["worker"] for t in study.trials} == {w.worker_id}
    assert study.user_attrs["test_metrics"] == job.test_metrics
    # nothing more to do: no extra trial, no second scoring
    assert w.run_once() is False
    assert len(study.get_trials()) == 3


def test_succeeded_is_written_with_its_model_path_and_final_counts(settings, submit, monkeypatch):
    """The status change to succeeded carries the final summary in the same UPDATE: a client that waits for
    "succeeded" (GET /jobs/{id}?wait=, the events stream) never sees it with no model or stale counts. The
    worker's own refreshes are switched off, so only that UPDATE can have written them."""
    import app.worker

    seen: list[tuple[str, str | None, int]] = []
    monkeypatch.setattr(app.worker, "try_refresh", lambda engine, job_id: seen.append(_state(settings, job_id)))
    job_id = submit(budget={"n_trials": 2})
    job = _drain(Worker(settings), settings, job_id)
    assert job.status == "succeeded" and job.model_path and job.model_path.endswith("best-model.pt")
    assert job.progress["counted"] == 2 and job.best_trial["number"] in (0, 1)
    assert all(status != "succeeded" for status, _, _ in seen)  # no refresh needed after the status change


def test_a_poller_racing_the_finishing_worker_never_sees_succeeded_without_its_model(settings, submit):
    """A reader thread polls the job row while the worker runs and finalises the job concurrently."""
    import threading

    job_id = submit(budget={"n_trials": 2})
    seen: list[tuple[str, str | None]] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            job = _job(settings, job_id)
            seen.append((job.status, job.model_path))
            time.sleep(0.005)

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        job = _drain(Worker(settings), settings, job_id)
    finally:
        done.set()
        reader.join(timeout=10)
    seen.append((_job(settings, job_id).status, _job(settings, job_id).model_path))
    assert job.status == "succeeded" and len(seen) > 2
    assert all(path for status, path in seen if status == "succeeded")


def _state(settings, job_id):
    job = _job(settings, job_id)
    return job.status, job.model_path, job.version


def test_two_workers_share_slots(settings, submit):
    job_id = submit(budget={"n_trials": 2})
    a, b = Worker(settings, worker_id="host:1"), Worker(settings, worker_id="host:2")
    a._start(job_id)
    assert a._claim(job_id) and b._claim(job_id)
    assert not a._claim(job_id)  # the budget is fully claimed


def test_workers_racing_to_finalise_score_the_test_set_once(settings, submit):
    """Several workers call ``_finalize`` at the same moment (a barrier): exactly one scores the test set."""
    import threading

    job_id = submit(budget={"n_trials": 2})
    workers = [Worker(settings, worker_id=f"host:{i}") for i in range(4)]
    workers[0]._start(job_id)
    job = _job(settings, job_id)
    contexts = [w._context(job_id, job.spec, job.study_name) for w in workers]  # data loaded before the race
    assert workers[0]._claim(job_id) and workers[0]._claim(job_id)
    optimize(contexts[0].study, contexts[0].objective, n_trials=2, timeout_s=None)
    barrier = threading.Barrier(len(workers))
    errors = []

    def race(w, ctx):
        try:
            barrier.wait()
            w._finalize(job, ctx)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=race, args=(w, c)) for w, c in zip(workers, contexts, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    done = _job(settings, job_id)
    assert done.status == "succeeded" and done.test_metrics
    assert [c.data.test_access_count for c in contexts].count(1) == 1
    assert sum(c.data.test_access_count for c in contexts) == 1
    scorer = next(w for w, c in zip(workers, contexts, strict=True) if c.data.test_access_count == 1)
    assert done.finalized_by == scorer.worker_id
    _update(settings, job_id, status="running")
    workers[1]._settle(job_id)  # a late second attempt finds the stored metrics, scores nothing new
    study = optuna.load_study(study_name=job.study_name, storage=workers[1].storage)
    assert len(study.trials) == 2


def test_data_failure_fails_the_job_and_worker_goes_on(settings, submit, client, upload, iris_csv):
    ds = upload(iris_csv, target="species").json()
    bad = submit(dataset={"id": ds["id"]})
    with session_scope(get_engine(settings.database_url)) as s:
        from app.models import Dataset

        path = s.get(Dataset, ds["id"]).path
    import os

    os.remove(path)
    good = submit(name="good", budget={"n_trials": 1})
    w = Worker(settings)
    assert _drain(w, settings, bad).status == "failed"
    assert "no such file" in _job(settings, bad).error
    assert _drain(w, settings, good).status == "succeeded"


def test_cancel_interrupts_and_releases_the_slot(settings, submit):
    job_id = submit(budget={"n_trials": 3, "max_epochs": 50}, early_stopping={"patience": 50})
    w = Worker(settings)
    _update(settings, job_id, cancel_requested=False)
    w._start(job_id)
    calls = {"n": 0}
    real = w._should_stop

    def stop_after_two(jid):
        calls["n"] += 1
        if calls["n"] == 3:
            _update(settings, jid, cancel_requested=True)
            w._cancel.clear()
        return real(jid)

    w._should_stop = stop_after_two  # type: ignore[method-assign]
    w._jobs.clear()
    assert w._work_on(job_id)
    job = _job(settings, job_id)
    assert job.status == "cancelled" and job.trials_claimed == 0 and job.finished_at
    study = optuna.load_study(study_name=job.study_name, storage=w.storage)
    (t,) = study.trials
    assert t.state == TrialState.FAIL and t.system_attrs.get("interrupted") is True


def test_cancel_with_no_running_trial_is_settled_by_maintenance(settings, submit):
    job_id = submit()
    _update(settings, job_id, status="running", cancel_requested=True)
    Worker(settings).maintain()
    assert _job(settings, job_id).status == "cancelled"


def test_stale_trial_is_failed_retried_and_its_slot_released(settings, submit):
    job_id = submit(budget={"n_trials": 1})
    w = Worker(settings)
    w._start(job_id)
    job = _job(settings, job_id)
    study = optuna.create_study(study_name=job.study_name, storage=w.storage)
    assert w._claim(job_id)
    trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-3, 3e-2, log=True)})
    w.storage.record_heartbeat(trial._trial_id)  # then the "worker" dies
    time.sleep(settings.grace_period + 1.2)
    w.maintain()
    job = _job(settings, job_id)
    assert job.trials_claimed == 0
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.WAITING]
    # the retry runs under a fresh claim and the job completes with exactly one counted trial
    done = _drain(w, settings, job_id)
    assert done.status == "succeeded"
    assert trial_counts(study).counted == 1


def test_finalizing_left_by_a_dead_worker_goes_back_to_running(settings, submit):
    job_id = submit(budget={"n_trials": 1})
    old = utcnow() - timedelta(seconds=settings.grace_period + 5)
    _update(settings, job_id, status="finalizing", finalized_by="gone:1", heartbeat_at=old, started_at=old)
    fresh = submit(name="fresh")
    _update(settings, fresh, status="finalizing", finalized_by="alive:1", heartbeat_at=utcnow())
    w = Worker(settings)
    w.recover()
    assert _job(settings, job_id).status == "running" and _job(settings, fresh).status == "finalizing"
    assert _drain(w, settings, job_id).status == "succeeded"


def test_leaked_slots_are_given_back(settings, submit):
    job_id = submit(budget={"n_trials": 2})
    w = Worker(settings)
    w._start(job_id)
    _update(settings, job_id, trials_claimed=2)  # two claims whose workers died before a trial existed
    optuna.create_study(study_name=_job(settings, job_id).study_name, storage=w.storage)
    w.maintain()
    time.sleep(settings.grace_period + 0.2)
    w.maintain()
    assert _job(settings, job_id).trials_claimed == 0
    assert _drain(w, settings, job_id).status == "succeeded"


def test_deadline_passed_finalises_with_what_is_done(settings, submit):
    job_id = submit(budget={"n_trials": 5})
    w = Worker(settings)
    w._start(job_id)
    assert w._work_on(job_id)
    _update(settings, job_id, deadline=utcnow() - timedelta(seconds=1))
    job = _drain(w, settings, job_id)
    assert job.status == "succeeded" and job.trials_claimed == 1


def test_no_completed_trial_fails_the_job(settings, submit):
    job_id = submit(budget={"n_trials": 1, "timeout_s": 1})
    w = Worker(settings)
    w._start(job_id)
    _update(settings, job_id, deadline=utcnow() - timedelta(seconds=1))
    w.maintain()
    job = _job(settings, job_id)
    assert job.status == "failed" and "no trial completed" in job.error
