"""app/services/summary.py: the summary on the job row matches the study after every trial of a real job."""

import optuna
import sqlalchemy as sa

from app.db import get_engine, session_scope
from app.models import Job
from app.services.jobs import create_job
from app.services.summary import refresh_summary
from app.services.tenancy import ANONYMOUS
from app.worker import Worker
from tuner.runner import trial_counts
from tuner.spec import JobSpec


def _job(settings, job_id) -> Job:
    with session_scope(get_engine(settings.database_url)) as s:
        return s.get(Job, job_id)


def test_summary_matches_the_study_after_every_trial(settings, spec_dict):
    spec = spec_dict(budget={"n_trials": 4, "max_epochs": 3}, sampler={"kind": "random", "seed": 3},
                     pruner={"kind": "median", "n_startup_trials": 1})
    with session_scope(get_engine(settings.database_url), write=True) as s:
        job_id = create_job(s, JobSpec.model_validate(spec), principal=ANONYMOUS).id
    w = Worker(settings)
    versions, seen_trials = [_job(settings, job_id).version], 0
    for _ in range(12):
        w.run_once()
        job = _job(settings, job_id)
        versions.append(job.version)
        try:
            study = optuna.load_study(study_name=job.study_name, storage=w.storage)
        except KeyError:
            continue
        trials = study.get_trials()
        if len(trials) > seen_trials:  # a trial ended in this step: the row says what the study says
            seen_trials = len(trials)
            assert job.progress == trial_counts(study).as_dict()
            bt = study.best_trial
            assert job.best_trial == {"number": bt.number, "params": bt.params, "value": bt.value,
                                      "best_epoch": bt.user_attrs["best_epoch"]}
        if job.status == "succeeded":
            break
    assert job.status == "succeeded" and seen_trials == 4
    assert job.model_path == study.user_attrs["model_path"] and job.updated_at is not None
    assert versions == sorted(versions) and versions[-1] >= 4 + 3  # start, 4 trials, finalising, succeeded


def test_refresh_without_a_study_and_for_an_unknown_job(settings, spec_dict):
    engine = get_engine(settings.database_url)
    with session_scope(engine, write=True) as s:
        job_id = create_job(s, JobSpec.model_validate(spec_dict()), principal=ANONYMOUS).id
    assert refresh_summary(engine, job_id) == 1
    assert refresh_summary(engine, job_id) == 2
    job = _job(settings, job_id)
    assert job.version == 2 and job.progress is None and job.best_trial is None
    assert refresh_summary(engine, "nope") is None


def test_get_job_reads_no_optuna_table(settings, client, spec_dict):
    job_id = client.post("/jobs", json=spec_dict()).json()["id"]
    statements: list[str] = []
    engine = get_engine(settings.database_url)

    def record(_conn, _cursor, statement, *_args):
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        assert client.get(f"/jobs/{job_id}").status_code == 200
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    selects = [st for st in statements if st.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 1 and "FROM jobs \nWHERE jobs.id = " in selects[0]
    assert client.app.state.storage._storage is None  # Optuna's storage was never even opened


def test_the_running_trial_shows_in_the_summary(settings, spec_dict, monkeypatch):
    from tuner.objective import Objective

    with session_scope(get_engine(settings.database_url), write=True) as s:
        job_id = create_job(s, JobSpec.model_validate(spec_dict(budget={"n_trials": 2})), principal=ANONYMOUS).id
    seen: list[int] = []
    real = Objective.__call__

    def spy(self, trial):
        seen.append(_job(settings, job_id).progress["running"])
        return real(self, trial)

    monkeypatch.setattr(Objective, "__call__", spy)
    w = Worker(settings)
    for _ in range(6):
        w.run_once()
    assert seen == [1, 1] and _job(settings, job_id).progress["running"] == 0
