"""Jobs: submission (spec checks the API adds to the spec's own), listing, cancel and delete."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.errors import Conflict, FieldErrors, NotFound, field_error
from app.models import Dataset, Job, JobStatus, utcnow
from app.services.tenancy import Principal, can_see, owned
from app.studies import progress_summary
from tuner.spec import JobSpec, objective_errors

PATH_REFUSED = "dataset.path: server file paths are not accepted; upload the file with POST /datasets"

__all__ = ["PATH_REFUSED", "cancel_job", "create_job", "delete_job", "get_job", "job_detail", "list_jobs"]


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
        if dataset.missing_values and ds.impute == "none":
            errors.append((["body", "dataset", "impute"],
                           (f"dataset.impute: the data set has {dataset.missing_values} missing values; "
                           "set it to 'mean' or 'median'")))
        if errors:
            raise FieldErrors(errors)
        spec = spec.model_copy(update={"dataset": ds.model_copy(update={"target": dataset.target, "task": task})})
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


def job_detail(job: Job, storage: optuna.storages.BaseStorage) -> dict[str, Any]:
    """The job row plus progress and best trial from its study (stored results once finished)."""
    summary = progress_summary(storage, job.study_name)
    counts = summary["counts"]
    return {
        **{c: getattr(job, c) for c in (
            "id", "name", "status", "dataset_id", "n_trials", "cancel_requested", "created_at", "started_at",
            "finished_at", "error", "study_name", "deadline", "spec")},
        "progress": {"n_trials": job.n_trials, **counts},
        "best_trial": job.best_trial or summary["best_trial"],
        "test_metrics": job.test_metrics or summary["test_metrics"],
        "model_path": summary["model_path"],
    }


def cancel_job(session: Session, job_id: str, *, principal: Principal) -> Job:
    """Queued: cancelled now. Running: flagged; its workers stop at the next epoch boundary."""
    job = get_job(session, job_id, principal=principal)
    now = utcnow()
    res = session.execute(
        sa.update(Job).where(Job.id == job_id, Job.status == JobStatus.queued.value)
        .values(status=JobStatus.cancelled.value, cancel_requested=True, finished_at=now)
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        res = session.execute(
            sa.update(Job).where(Job.id == job_id, Job.status == JobStatus.running.value)
            .values(cancel_requested=True)
        )
        if res.rowcount != 1:  # type: ignore[attr-defined]
            session.refresh(job)
            raise Conflict(f"job {job_id} is {job.status} and cannot be cancelled")
    session.refresh(job)
    return job


def delete_job(
    session: Session, job_id: str, *, principal: Principal, storage: optuna.storages.BaseStorage, artifacts_dir: Path
) -> None:
    """Remove the job, its study and its artifacts; refused while it runs or is being finalised."""
    job = get_job(session, job_id, principal=principal)
    res = session.execute(
        sa.delete(Job).where(Job.id == job_id, Job.status.not_in([JobStatus.running.value, JobStatus.finalizing.value]))
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict(f"job {job_id} is {job.status}; cancel it first")
    session.commit()  # before Optuna writes: on SQLite our open write transaction would block it
    try:
        optuna.delete_study(study_name=job.study_name, storage=storage)
    except KeyError:
        pass  # never opened (cancelled while queued)
    shutil.rmtree(Path(artifacts_dir) / job.study_name, ignore_errors=True)
