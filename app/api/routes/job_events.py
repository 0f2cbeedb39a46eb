"""``GET /jobs/{id}/events``: server-sent events while a job runs (``progress``, ``best``, ``finished``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.sse import EventSourceResponse, ServerSentEvent
from sqlalchemy.engine import Engine

from app.api.auth import PrincipalDep, still_authorised
from app.api.deps import EngineDep, WatcherDep
from app.api.errors import json_responses
from app.db import session_scope
from app.errors import NotFound
from app.services import jobs as service
from app.services.tenancy import Principal

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=json_responses(404, 409, 413, 422))

WAIT_S = 30.0  # one wait on the watcher; FastAPI sends keep-alive comments meanwhile


def _read(engine: Engine, job_id: str, principal: Principal) -> service.JobRead:
    with session_scope(engine) as session:
        return service.read_job(session, job_id, principal=principal)


async def _first_read(job_id: str, engine: EngineDep, principal: PrincipalDep) -> service.JobRead:
    """Read before the stream starts, so an unknown job (or another tenant's) is a plain 404."""
    return await run_in_threadpool(_read, engine, job_id, principal)


def _brief(detail: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in detail.items() if k != "spec"}


@router.get("/{job_id}/events", response_class=EventSourceResponse)
async def job_events(
    job_id: str, request: Request, engine: EngineDep, watcher: WatcherDep, principal: PrincipalDep,
    first: Annotated[service.JobRead, Depends(_first_read)],
) -> AsyncIterator[ServerSentEvent]:
    """A ``progress`` event at once and after every change (status, counts, best trial: the job without its
    spec), ``best`` when the best trial changes, then ``finished`` (the final job) and the stream ends.
    Between changes the connection holds no database connection and no thread. The stream ends within
    the key cache's time (``TUNER_AUTH_CACHE_S``, at least 0.5 s) once the caller's key is revoked."""
    got, best = first, None
    recheck_s = min(WAIT_S, max(0.5, request.app.state.settings.auth_cache_s))
    while True:
        detail = got.detail
        assert detail is not None
        yield ServerSentEvent(event="progress", id=got.etag, data=_brief(detail))
        if detail["best_trial"] is not None and detail["best_trial"] != best:
            best = detail["best_trial"]
            yield ServerSentEvent(event="best", id=got.etag, data=best)
        if got.finished:
            yield ServerSentEvent(event="finished", id=got.etag, data=_brief(detail))
            return
        while True:
            changed = await watcher.wait_changed(job_id, got.etag, recheck_s)
            if not await still_authorised(request):
                return  # the key was revoked while the stream was open
            if changed:
                break
        try:
            got = await run_in_threadpool(_read, engine, job_id, principal)
        except NotFound:
            return  # deleted meanwhile
