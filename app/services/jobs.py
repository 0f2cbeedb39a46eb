"""Jobs: submission (spec checks the API adds to the spec's own), listing, cancel and delete."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import optuna
import sqlalchemy as sa
from optuna.trial import TrialState
from sqlalchemy.orm import Session

from app.errors import Conflict, FieldErrors, NotFound, field_error
from app.liveness import live_workers
from app.models import FINISHED_STATUSES, Dataset, Job, JobStatus, SlotRelease, utcnow
from app.services.summary import bump_version, job_etag
from app.services.tenancy import Principal, can_see, owned, require_admin
from tuner.spec import JobSpec, memory_errors, objective_errors, split_errors

PATH_REFUSED = "dataset.path: server file paths are not accepted; upload the file with POST /datasets"

__all__ = ["PATH_REFUSED", "cancel_job", "create_job", "delete_job", "get_job", "job_detail", "list_jobs",
           "read_job"]


def create_job(session: Session, spec: JobSpec, *, principal: Principal) -> Job:
    """Check what only the service knows (uploads, no server paths), store the resolved spec, queue it.

    The job belongs to the principal's tenant and may use only that tenant's uploads."""
    ds = spec.dataset
    dataset: Dataset | None = None
    if ds.path is not None:
        raise FieldErrors([(["body", "dataset", "path"], PATH_REFUSED)])
    if ds.id is not None:
        dataset = session.get(Dataset, ds.id)
        if dataset is None or not can_see(dataset, principal):
            raise field_error(["body", "dataset", "id"], "no such dataset")
        errors: list[tuple[list[str | int], str]] = []
        if ds.target is not None and dataset.target is not None and ds.target != dataset.target:
            errors.append((["body", "dataset", "target"],
                           f"dataset.target: the uploaded data set's target is '{dataset.target}'"))
        task = ds.task or dataset.task
        errors.extend((["body", "objective"], e) for e in objective_errors(spec.objective, task))
        errors.extend((["body", "model"], e) for e in memory_errors(spec, dataset.columns))  # raw width
        counts = [int(c) for c in (dataset.class_counts or {}).values()] if task == "classification" else None
        errors.extend((["body", "split"], e) for e in split_errors(spec.split, dataset.rows, counts or None, task))
        if dataset.missing_values and ds.impute == "none":
            errors.append((["body", "dataset", "impute"],
                           (f"dataset.impute: the data set has {dataset.missing_values} missing values; "
                           "set it to 'mean' or 'median'")))
        if errors:
            raise FieldErrors(errors)
        # the upload's task (inferred from every row) only checks the objective here; unless the user pinned it,
        # the engine infers it again from the non-test rows (no test row decides it)
        spec = spec.model_copy(update={"dataset": ds.model_copy(update={"target": dataset.target})})
    job_id = str(uuid.uuid4())
    job = Job(
        id=job_id,
        name=spec.name,
        status=JobStatus.queued.value,
        spec=spec.model_dump(mode="json"),
        study_name=f"job-{job_id}",
        dataset_id=dataset.id if dataset else None,
        n_trials=spec.budget.n_trials,
        trials_claimed=0,
        cancel_requested=False,
        created_at=utcnow(),
        tenant=principal.tenant,
    )
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, job_id: str, *, principal: Principal) -> Job:
    """The job, if ``principal`` may see it; another tenant's job is 404 exactly like a missing one.

    ``principal`` is a required keyword on purpose: every route that takes a job id loads it here."""
    job = session.get(Job, job_id)
    if job is None or not can_see(job, principal):
        raise NotFound(f"no job with id {job_id}")
    return job


def list_jobs(
    session: Session, *, principal: Principal, status: JobStatus | None, limit: int, offset: int
) -> tuple[list[Job], int]:
    query = owned(sa.select(Job), Job, principal)
    count = owned(sa.select(sa.func.count()).select_from(Job), Job, principal)
    if status is not None:
        query = query.where(Job.status == status.value)
        count = count.where(Job.status == status.value)
    rows = session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit).offset(offset)).all()
    return list(rows), int(session.scalar(count) or 0)


def job_detail(job: Job, storage: optuna.storages.BaseStorage | None = None) -> dict[str, Any]:
    """The job row with its summary (progress, best trial, test metrics once finished): no study query.

    The worker keeps the summary up to date (:mod:`app.services.summary`); ``storage`` is not used.
    """
    return {
        **{c: getattr(job, c) for c in (
            "id", "name", "status", "dataset_id", "n_trials", "cancel_requested", "created_at", "started_at",
            "finished_at", "error", "study_name", "deadline", "spec", "best_trial", "test_metrics", "model_path",
            "version", "updated_at", "last_error")},
        "failures": job.failures or 0,
        "progress": {"n_trials": job.n_trials, **(job.progress or {})},
    }


class JobRead(NamedTuple):
    etag: str
    detail: dict[str, Any] | None  # None: the caller's If-None-Match matched (304)
    finished: bool


def read_job(session: Session, job_id: str, *, principal: Principal, if_none_match: str | None = None) -> JobRead:
    """``GET /jobs/{id}``: one primary-key read; the detail only when the caller's ETag is stale."""
    job = get_job(session, job_id, principal=principal)
    etag = job_etag(job.id, job.version, job.status, job.cancel_requested)
    finished = job.status in FINISHED_STATUSES
    if etag_matches(if_none_match, etag):
        return JobRead(etag, None, finished)
    return JobRead(etag, job_detail(job), finished)


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 weak comparison of an ``If-None-Match`` header (a list, or ``*``) with ``etag``."""
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


def cancel_job(
    session: Session, job_id: str, *, principal: Principal, storage: optuna.storages.BaseStorage | None = None,
    grace_period: float = 30, force: bool = False,
) -> Job:
    """Queued: cancelled now. Running: flagged; its workers stop at the next epoch boundary.

    With ``force``, or when no worker has written a heartbeat for ``grace_period`` (nobody would act on the
    flag), a running or finalising job is cancelled at once and its running trials are marked failed.
    """
    job = get_job(session, job_id, principal=principal)
    if force:
        require_admin(principal, "force=true")
    now = utcnow()
    res = session.execute(
        sa.update(Job).where(Job.id == job_id, Job.status == JobStatus.queued.value)
        .values(status=JobStatus.cancelled.value, cancel_requested=True, finished_at=now, **bump_version())
    )
    if res.rowcount == 1:  # type: ignore[attr-defined]
        session.refresh(job)
        return job
    active = [JobStatus.running.value, JobStatus.finalizing.value]
    if force or live_workers(session, grace_period) == 0:
        res = session.execute(
            sa.update(Job).where(Job.id == job_id, Job.status.in_(active))
            .values(status=JobStatus.cancelled.value, cancel_requested=True, finished_at=now, heartbeat_at=None,
                    **bump_version())
        )
        if res.rowcount == 1:  # type: ignore[attr-defined]
            session.commit()  # before Optuna writes: on SQLite our open write transaction would block it
            if storage is not None:
                _fail_running_trials(storage, job.study_name)
            session.refresh(job)
            return job
    else:
        res = session.execute(
            sa.update(Job).where(Job.id == job_id, Job.status == JobStatus.running.value)
            .values(cancel_requested=True, **bump_version())
        )
        if res.rowcount == 1:  # type: ignore[attr-defined]
            session.refresh(job)
            return job
    session.refresh(job)
    hint = "; its worker is alive (use force=true to cancel it now)" if job.status in active else ""
    raise Conflict(f"job {job_id} is {job.status} and cannot be cancelled{hint}")


def _fail_running_trials(storage: optuna.storages.BaseStorage, study_name: str) -> None:
    """Trials a cancelled job left RUNNING (their workers are gone) end FAIL, marked interrupted."""
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return
    for t in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
        try:
            storage.set_trial_system_attr(t._trial_id, "interrupted", True)
            storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # its worker finished it meanwhile


def delete_job(
    session: Session, job_id: str, *, principal: Principal, storage: optuna.storages.BaseStorage,
    artifacts_dir: Path, grace_period: float = 30, force: bool = False,
) -> None:
    """Remove the job, its study and its artifacts; refused while it runs or is being finalised by a live
    worker (``force`` deletes it anyway; with no live worker it is deleted at once)."""
    job = get_job(session, job_id, principal=principal)
    if force:
        require_admin(principal, "force=true")
    query = sa.delete(Job).where(Job.id == job_id)
    if not force and live_workers(session, grace_period) > 0:
        query = query.where(Job.status.not_in([JobStatus.running.value, JobStatus.finalizing.value]))
    session.execute(sa.delete(SlotRelease).where(SlotRelease.job_id == job_id))
    res = session.execute(query)
    if res.rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict(f"job {job_id} is {job.status}; cancel it first (or use force=true)")
    session.commit()  # before Optuna writes: on SQLite our open write transaction would block it
    try:
        optuna.delete_study(study_name=job.study_name, storage=storage)
    except KeyError:
        pass  # never opened (cancelled while queued)
    shutil.rmtree(Path(artifacts_dir) / job.study_name, ignore_errors=True)
