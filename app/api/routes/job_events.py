"""``GET /jobs/{id}/events``: server-sent events while a job runs (``progress``, ``best``, ``finished``)."""

from __future__ import annotations

import asyncio
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
from app.services import jobs as service
from app.services.tenancy import Principal
from app.services.watch import JobSnapshot

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=json_responses(404, 409, 413, 422))

WAIT_S = 30.0  # one wait on the watcher; FastAPI sends keep-alive comments meanwhile


def _read(engine: Engine, job_id: str, principal: Principal) -> service.JobRead:
    with session_scope(engine) as session:
        return service.read_job(session, job_id, principal=principal)


async def _first_read(job_id: str, engine: EngineDep, principal: PrincipalDep) -> service.JobRead:
    """Read before the stream starts, so an unknown job (or another tenant's) is a plain 404."""
    return await run_in_threadpool(_read, engine, job_id, principal)


_rechecks: dict[tuple[int, int, str | None], asyncio.Task[bool]] = {}


async def _still_authorised(request: Request) -> bool:
    """:func:`still_authorised`, one look-up at a time per key: when the key cache expires, the streams of
    that key wake together and share one check instead of each reading the database."""
    found = request.scope.get("state", {}).get("auth")
    if found is None:
        return await still_authorised(request)
    loop = asyncio.get_running_loop()
    key = (id(loop), id(found[0]), found[1])
    task = _rechecks.get(key)
    if task is None:
        task = loop.create_task(still_authorised(request))
        _rechecks[key] = task
        task.add_done_callback(lambda _t: _rechecks.pop(key, None))
    return await asyncio.shield(task)


def _events(snap: JobSnapshot, best: Any) -> tuple[list[ServerSentEvent], Any]:
    """The events of one (shared) read: their JSON was encoded once for every stream of the job."""
    assert snap.detail is not None
    out = [ServerSentEvent(event="progress", id=snap.etag, raw_data=snap.brief_json)]
    if snap.detail["best_trial"] is not None and snap.detail["best_trial"] != best:
        best = snap.detail["best_trial"]
        out.append(ServerSentEvent(event="best", id=snap.etag, raw_data=snap.best_json))
    if snap.finished:
        out.append(ServerSentEvent(event="finished", id=snap.etag, raw_data=snap.brief_json))
    return out, best


@router.get("/{job_id}/events", response_class=EventSourceResponse)
async def job_events(
    job_id: str, request: Request, watcher: WatcherDep, principal: PrincipalDep,
    first: Annotated[service.JobRead, Depends(_first_read)],
) -> AsyncIterator[ServerSentEvent]:
    """A ``progress`` event at once and after every change (status, counts, best trial: the job without its
    spec), ``best`` when the best trial changes, then ``finished`` (the final job) and the stream ends.
    Between changes the connection holds no database connection and no thread, and a change is read once
    for all the streams of the job; events come at most about once a second (changes closer together
    arrive as the latest one). The stream ends when the server shuts down, and within the key cache's time
    (``TUNER_AUTH_CACHE_S``, at least 0.5 s) once the caller's key is revoked."""
    assert first.detail is not None
    snap, best = JobSnapshot.of(first.etag, first.detail, finished=first.finished, tenant=None), None
    recheck_s = min(WAIT_S, max(0.5, request.app.state.settings.auth_cache_s))
    while True:
        events, best = _events(snap, best)
        for event in events:
            yield event
        if snap.finished:
            return
        while True:
            changed = await watcher.wait_changed(job_id, snap.etag, recheck_s)
            if watcher.stopping:
                return  # the server shuts down
            if not await _still_authorised(request):
                return  # the key was revoked while the stream was open
            if changed is not None:
                break
        if not changed.visible_to(principal):
            return  # deleted meanwhile (or, were it ever moved, no longer the caller's tenant's)
        snap = changed
