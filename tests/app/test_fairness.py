"""Fair share (issue 13): one worker alternates between tenants, and between a tenant's jobs, instead of
running the oldest job to the end first (``Worker._candidates``)."""

from __future__ import annotations

import sqlalchemy as sa

from app.db import get_engine, session_scope
from app.models import Job
from app.services.jobs import create_job
from app.services.tenancy import Principal
from app.worker import Worker
from tuner.spec import JobSpec


def _submit(settings, spec_dict, tenant: str, n_trials: int) -> str:
    spec = JobSpec.model_validate(spec_dict(name=f"{tenant}-{n_trials}", budget={"n_trials": n_trials, "max_epochs": 1}))
    with session_scope(get_engine(settings.database_url), write=True) as s:
        return create_job(s, spec, principal=Principal(tenant=tenant)).id


def _claimed(settings, job_id: str) -> int:
    with session_scope(get_engine(settings.database_url)) as s:
        return int(s.scalar(sa.select(Job.trials_claimed).where(Job.id == job_id)))


def test_two_tenants_interleave_on_one_worker(settings, spec_dict):
    big = _submit(settings, spec_dict, "a", 20)  # first, and large
    small = _submit(settings, spec_dict, "b", 4)
    w = Worker(settings)
    order = []
    for _ in range(8):  # eight real trials on one worker
        before = {j: _claimed(settings, j) for j in (big, small)}
        assert w.run_once()
        order += [j for j in (big, small) if _claimed(settings, j) > before[j]]
    # oldest-first would give eight trials of a's job; fair share alternates a, b, a, b, ...
    assert order == [big, small] * 4 or order == [small, big] * 4, order
    assert _claimed(settings, small) == 4


def test_round_robin_across_a_tenants_jobs_and_tenants(settings, spec_dict):
    a1, a2 = _submit(settings, spec_dict, "a", 10), _submit(settings, spec_dict, "a", 10)
    b1 = _submit(settings, spec_dict, "b", 10)
    w = Worker(settings)
    picks = []
    for _ in range(6):  # claim slots only (no training): the order the worker would run trials in
        job_id = w._candidates()[0]
        w._start(job_id)
        assert w._claim(job_id)
        picks.append(job_id)
    tenants = ["a" if j in (a1, a2) else "b" for j in picks]
    assert tenants in (["a", "b"] * 3, ["b", "a"] * 3), tenants
    a_jobs = [j for j in picks if j != b1]
    assert a_jobs[0] != a_jobs[1] and a_jobs[0] == a_jobs[2]  # a's two jobs take turns
