"""``/jobs``: submit, list, read, trials, cancel, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status

from app.api.auth import PrincipalDep
from app.api.deps import SessionDep, SettingsDep, StorageDep, WriteSessionDep
from app.models import JobStatus
from app.schemas import JobPublic, JobSummary, Page, TrialPublic
from app.services import jobs as service
from app.services import quotas
from app.studies import trial_dict, trial_page
from tuner.spec import JobSpec

router = APIRouter(prefix="/jobs", tags=["jobs"])

LimitQ = Annotated[int, Query(ge=1, le=500, description="page size")]
OffsetQ = Annotated[int, Query(ge=0)]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobPublic)
def submit_job(
    spec: JobSpec, session: WriteSessionDep, storage: StorageDep, response: Response, principal: PrincipalDep,
    settings: SettingsDep,
) -> dict[str, Any]:
    """Queue a tuning job. The body is the job spec (see ``examples/``); the data set is a builtin one
    or an upload (``{"dataset": {"id": ...}}``), never a server path."""
    quotas.check_job(session, principal, spec.budget.n_trials, settings)
    job = service.create_job(session, spec, principal=principal)
    response.headers["Location"] = f"/jobs/{job.id}"
    return service.job_detail(job, storage)


@router.get("", response_model=Page[JobSummary])
def list_jobs(
    session: SessionDep, principal: PrincipalDep, status: JobStatus | None = None, limit: LimitQ = 50,
    offset: OffsetQ = 0,
) -> dict[str, Any]:
    """Jobs, newest first; ``status`` filters."""
    items, total = service.list_jobs(session, principal=principal, status=status, limit=limit, offset=offset)
    return {"items": items, "total": total, "limit": limit, "offset": offset}


@router.get("/{job_id}", response_model=JobPublic)
def read_job(job_id: str, session: SessionDep, storage: StorageDep, principal: PrincipalDep) -> dict[str, Any]:
    """Status, progress, best trial so far, test metrics once finished."""
    return service.job_detail(service.get_job(session, job_id, principal=principal), storage)


@router.get("/{job_id}/trials", response_model=Page[TrialPublic])
def read_trials(
    job_id: str, session: SessionDep, storage: StorageDep, principal: PrincipalDep, limit: LimitQ = 100,
    offset: OffsetQ = 0,
) -> dict[str, Any]:
    """Every trial in number order: params, value, learning curve, duration, worker, failure reason."""
    job = service.get_job(session, job_id, principal=principal)
    trials, total = trial_page(storage, job.study_name, limit=limit, offset=offset)
    return {"items": [trial_dict(t) for t in trials], "total": total, "limit": limit, "offset": offset}


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(job_id: str, session: WriteSessionDep, storage: StorageDep, principal: PrincipalDep) -> dict[str, Any]:
    """Queued: cancelled at once. Running: stops at the next epoch boundary. Finished: 409."""
    return service.job_detail(service.cancel_job(session, job_id, principal=principal), storage)


@router.delete("/{job_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_job(
    job_id: str, session: WriteSessionDep, storage: StorageDep, settings: SettingsDep, principal: PrincipalDep
) -> None:
    """Remove the job, its study and its artifacts (409 while it runs)."""
    service.delete_job(session, job_id, principal=principal, storage=storage, artifacts_dir=settings.artifacts_dir)
