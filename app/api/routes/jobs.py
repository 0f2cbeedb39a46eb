"""``/jobs``: submit, list, read, trials, cancel, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.engine import Engine

from app.api.auth import PrincipalDep, get_principal
from app.api.deps import JOB_EXISTS, SessionDep, SettingsDep, StorageDep, WatcherDep, WriteSessionDep
from app.api.errors import responses
from app.db import session_scope
from app.errors import NotFound
from app.models import FINISHED_STATUSES, JobStatus
from app.schemas import JobPublic, JobSummary, Page, TrialPublic
from app.services import jobs as service
from app.services import quotas
from app.services.jobs import etag_matches
from app.services.tenancy import Principal
from app.services.watch import JobSnapshot, etag_parts
from app.studies import trial_dict, trial_page
from tuner.spec import JobSpec

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=responses(404, 409, 413, 422, 429))

LimitQ = Annotated[int, Query(ge=1, le=500, description="page size")]
OffsetQ = Annotated[int, Query(ge=0, le=1_000_000_000)]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobPublic)
def submit_job(
    spec: JobSpec, session: WriteSessionDep, response: Response, principal: PrincipalDep, settings: SettingsDep,
) -> dict[str, Any]:
    """Queue a tuning job. The body is the job spec (see ``examples/``); the data set is a builtin one
    or an upload (``{"dataset": {"id": ...}}``), never a server path."""
    quotas.check_job(session, principal, spec.budget.n_trials, settings)
    job = service.create_job(session, spec, principal=principal)
    response.headers["Location"] = f"/jobs/{job.id}"
    return service.job_detail(job)


@router.get("", response_model=Page[JobSummary])
def list_jobs(
    session: SessionDep, principal: PrincipalDep, status: JobStatus | None = None, limit: LimitQ = 50,
    offset: OffsetQ = 0,
) -> dict[str, Any]:
    """Jobs, newest first; ``status`` filters."""
    items, total = service.list_jobs(session, principal=principal, status=status, limit=limit, offset=offset)
    return {"items": items, "total": total, "limit": limit, "offset": offset}


WaitQ = Annotated[float | None, Query(ge=0, le=60, description=(
    "long-poll: with If-None-Match, answer as soon as the job changes, or after this many seconds (304)"))]


@router.get("/{job_id}", response_model=JobPublic,
            responses={304: {"description": "Not modified: the job's ETag equals If-None-Match"}})
async def read_job(
    job_id: str, request: Request, watcher: WatcherDep, response: Response, wait: WaitQ = None,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Any:
    """Status, progress, best trial so far, test metrics once finished, from the summary on the job row.

    Send the ``ETag`` back as ``If-None-Match``: ``304`` while nothing changed; with ``?wait=S`` the answer
    comes as soon as the job changes (or ``304`` after S seconds). Waiting holds no database connection,
    and a change is read once for everybody waiting on the job: within the watcher's interval (0.25 s) of
    it, at most about once a second per job (changes closer together arrive as the latest one).
    """
    # (the engine and the caller straight from the request: no threadpool hop for a dependency, per poll)
    engine, principal = request.app.state.engine, get_principal(request)
    snap = tag = None
    theirs = (if_none_match or "").strip()
    if wait and theirs and "," not in theirs:  # (a list of ETags: read, as below)
        snap, tag = watcher.current(job_id), etag_parts(theirs, job_id)
    if snap is not None and not snap.gone and tag is not None and (
            tag[0] != snap.detail["version"] or etag_matches(theirs, snap.etag)):  # type: ignore[index]
        # answered from the watcher's shared read: no read of our own, the tenant check in memory
        if not snap.visible_to(principal):
            raise NotFound(f"no job with id {job_id}")
        watcher.watch(job_id)  # (keeps it watched a while: the caller comes back with the ETag it gets now)
        shared = snap.detail["version"]  # type: ignore[index]
        if tag[0] < shared:  # the caller's copy is older than the shared read: news
            return _shared_answer(snap)
        if tag[0] > shared and tag[1] in FINISHED_STATUSES:  # ahead of the shared read, and nothing will change
            return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": theirs})
        # the same (or, read from the database meanwhile, newer than the shared read: wait for it to catch up)
        etag, finished = (snap.etag, snap.finished) if etag_matches(theirs, snap.etag) else (theirs, False)
    else:
        got = await run_in_threadpool(_read_job, engine, job_id, if_none_match, principal)
        if wait:  # the caller may see it (or that was a 404): watch it, so its next poll needs no read
            watcher.watch(job_id)
        if got.detail is not None:
            response.headers["ETag"] = got.etag
            return got.detail
        etag, finished = got.etag, got.finished
    if wait and not finished:
        changed = await watcher.wait_changed(job_id, etag, wait)
        if changed is not None:
            if not changed.visible_to(principal):  # deleted meanwhile (or not the caller's tenant's)
                raise NotFound(f"no job with id {job_id}")
            if not etag_matches(if_none_match, changed.etag):
                return _shared_answer(changed)
            etag = changed.etag
    return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag})


def _shared_answer(snap: JobSnapshot) -> Response:
    """The ``200`` of a shared read: its body serialised once (as ``JobPublic``) for every waiter."""
    body = snap.cache.get("public")
    if body is None:
        body = snap.cache["public"] = JobPublic.model_validate(snap.detail).model_dump_json(by_alias=True).encode()
    return Response(body, media_type="application/json", headers={"ETag": snap.etag})


def _read_job(engine: Engine, job_id: str, if_none_match: str | None, principal: Principal) -> service.JobRead:
    with session_scope(engine) as session:
        return service.read_job(session, job_id, if_none_match=if_none_match, principal=principal)


@router.get("/{job_id}/trials", response_model=Page[TrialPublic])
def read_trials(
    job_id: str, session: SessionDep, storage: StorageDep, principal: PrincipalDep, limit: LimitQ = 100,
    offset: OffsetQ = 0,
) -> dict[str, Any]:
    """Every trial in number order: params, value, learning curve, duration, worker, failure reason."""
    job = service.get_job(session, job_id, principal=principal)
    trials, total = trial_page(storage, job.study_name, limit=limit, offset=offset)
    return {"items": [trial_dict(t) for t in trials], "total": total, "limit": limit, "offset": offset}


ForceQ = Annotated[bool, Query(description="act at once, even while a live worker runs the job (admin keys only)")]


@router.post("/{job_id}/cancel", response_model=JobPublic, dependencies=[JOB_EXISTS])
def cancel_job(
    job_id: str, session: WriteSessionDep, storage: StorageDep, settings: SettingsDep, principal: PrincipalDep,
    force: ForceQ = False,
) -> dict[str, Any]:
    """Queued: cancelled at once. Running: stops at the next epoch boundary; cancelled at once when no worker
    is alive (no heartbeat for the grace period) or with ``force``. Finished: 409."""
    job = service.cancel_job(session, job_id, principal=principal, storage=storage,
                             grace_period=settings.grace_period, force=force)
    return service.job_detail(job)


@router.delete("/{job_id}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[JOB_EXISTS])
def delete_job(
    job_id: str, session: WriteSessionDep, storage: StorageDep, settings: SettingsDep, principal: PrincipalDep,
    force: ForceQ = False,
) -> None:
    """Remove the job, its study and its artifacts (409 while a live worker runs it, unless ``force``)."""
    service.delete_job(session, job_id, principal=principal, storage=storage, artifacts_dir=settings.artifacts_dir,
                       grace_period=settings.grace_period, force=force)
