"""Waiting for a job to change without a database connection, a thread or a read per waiting client.

One :class:`JobWatcher` per process (per event loop) runs one task while anybody waits: every
``interval`` it reads ``id, version, status, cancel_requested`` of all watched jobs in ONE query (in a
worker thread, for the length of that query only). For the jobs whose ETag changed it reads the whole
row ONCE (same thread, same connection) into a :class:`JobSnapshot`, the answer every waiter of that job
shares: the detail, the job's tenant (so each waiter checks in memory that its caller may see the job)
and the event stream's JSON, encoded once. So 500 waiters on a job changing 5 times a second cost about
4 row reads a second, not 2,500. Long-poll (``GET /jobs/{id}?wait=S``) and the event stream
(``GET /jobs/{id}/events``) both wait here. The waiters of a job are woken at most once a second (``min_gap``:
changes closer together arrive as the latest one) and in batches (``batch``, ``pace``), so that a thousand
answers never fall on the event loop at once and ``/healthz`` and the other routes stay fast.

A job stays watched for :attr:`JobWatcher.linger` seconds after its last waiter left, so a long-poll
client that asks again at once with the new ETag is answered from the shared read (no read of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from fastapi.encoders import jsonable_encoder
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.models import FINISHED_STATUSES, Job
from app.services.jobs import job_detail
from app.services.summary import job_etag
from app.services.tenancy import Principal

__all__ = ["GONE", "JobSnapshot", "JobWatcher", "etag_parts", "etag_version", "event_json", "watcher_for"]

log = logging.getLogger(__name__)
GONE = "gone"  # the ETag of a job that was deleted while somebody waited


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def event_json(value: Any) -> str:
    """``value`` as the event stream sends a ``data:`` field (FastAPI's encoding of ``ServerSentEvent.data``)."""
    return json.dumps(_finite(jsonable_encoder(value)))


@dataclass(frozen=True, eq=False)
class JobSnapshot:
    """One read of a job, shared by every waiter of that job (do not mutate ``detail``)."""

    etag: str
    tenant: str | None  # None: the job is gone
    finished: bool
    detail: Mapping[str, Any] | None  # ``job_detail(job)``; None when gone
    brief_json: str | None = None  # the detail without its spec, as the event stream's ``data:``
    best_json: str | None = None  # the best trial, likewise (None while there is none)
    cache: dict[str, Any] = field(default_factory=dict)  # what the routes derive once for all waiters

    @property
    def gone(self) -> bool:
        return self.detail is None

    def visible_to(self, principal: Principal) -> bool:
        """The tenant check of :func:`app.services.tenancy.can_see`, in memory (no read per waiter)."""
        return not self.gone and (principal.admin or self.tenant == principal.tenant)

    @classmethod
    def of(cls, etag: str, detail: Mapping[str, Any], *, finished: bool, tenant: str | None) -> JobSnapshot:
        brief = {k: v for k, v in detail.items() if k != "spec"}
        best = detail.get("best_trial")
        return cls(etag, tenant, finished, detail, event_json(brief), None if best is None else event_json(best))


GONE_SNAPSHOT = JobSnapshot(GONE, None, True, None)


def etag_parts(etag: str, job_id: str) -> tuple[int, str] | None:
    """``(version, status)`` of one of our ETags (``"<id>-<version>-<status>[-c]"``), None if not one."""
    tag = etag.strip().removeprefix("W/").strip('"')
    if not tag.startswith(f"{job_id}-"):
        return None
    version, _, rest = tag[len(job_id) + 1:].partition("-")
    if not (version.isascii() and version.isdigit() and len(version) < 19):
        return None
    return int(version), rest.removesuffix("-c")


def etag_version(etag: str, job_id: str) -> int | None:
    parts = etag_parts(etag, job_id)
    return None if parts is None else parts[0]


def _news(snap: JobSnapshot, etag: str, version: int | None) -> bool:
    """Whether ``snap`` is news to a caller holding ``etag`` (of ``version``): another ETag and not an older
    version (a caller that read the database after the watcher's last poll must not be sent back in time)."""
    if snap.etag == etag:
        return False
    if snap.gone or version is None:
        return True
    return int(snap.detail["version"]) >= version  # type: ignore[index]


@dataclass(eq=False)
class _Watch:
    snapshot: JobSnapshot | None = None  # what the waiters were given (None: not read yet)
    latest: JobSnapshot | None = None  # the newest read; given out once ``min_gap`` has passed
    waiters: set[asyncio.Future[None]] = field(default_factory=set)
    users: int = 0  # callers in wait_changed
    notified_at: float = -math.inf
    idle_since: float | None = None  # loop time the last caller left (None while somebody waits)


class JobWatcher:
    """``await watcher.wait_changed(job_id, etag, timeout)``: the shared :class:`JobSnapshot` once the job's
    ETag is not ``etag`` (None on timeout); ``watcher.current(job_id)``: the latest shared read, if fresh.

    Fair to everybody else in the process: the waiters of a job are woken at most once per ``min_gap``
    seconds (with the latest read: changes closer together arrive as one), and ``batch`` at a time, the next
    batch only once the event loop's thread has been busy at most ``duty`` of the time since the last one
    (checked every ``pace`` seconds, at most ``max_pause``): 500 answers never fall on the loop at once, and
    ``/healthz`` and the other routes keep at least half of it.
    """

    def __init__(self, engine: Engine, *, interval: float = 0.25, linger: float = 5.0, min_gap: float = 1.0,
                 batch: int = 20, pace: float = 0.01, duty: float = 0.5, max_pause: float = 0.5) -> None:
        self.engine, self.interval, self.linger = engine, interval, linger
        self.min_gap, self.batch, self.pace, self.duty, self.max_pause = min_gap, batch, pace, duty, max_pause
        self._watches: dict[str, _Watch] = {}
        self._task: asyncio.Task[None] | None = None
        self._wakers: set[asyncio.Task[None]] = set()
        self._last_poll: float | None = None  # loop time of the last successful poll
        self.polls = 0  # queries of the watched jobs' ETags (one per interval for all of them)
        self.reads = 0  # rows read in full: one per change of a watched job, whatever the number of waiters
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping = False  # the server shuts down: no more waiting

    def stop(self) -> None:
        """The server shuts down: every waiter returns now (None, as on a timeout) and later ones at once."""
        self.stopping = True
        for w in self._watches.values():
            for fut in w.waiters:
                if not fut.done():
                    fut.set_result(None)

    def watch(self, job_id: str) -> None:
        """Keep ``job_id`` watched for ``linger`` seconds from now, waiter or not (a long-poll that is answered
        at once comes back: its next request then finds the shared read)."""
        w = self._watches.get(job_id)
        if w is None:
            w = self._watches[job_id] = _Watch()
        if w.users == 0:
            w.idle_since = asyncio.get_running_loop().time()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="job-watcher")

    def current(self, job_id: str) -> JobSnapshot | None:
        """The shared read of ``job_id`` given to its waiters, while it is watched and the polls succeed;
        None otherwise (read the database yourself)."""
        w = self._watches.get(job_id)
        if w is None or w.snapshot is None or self._last_poll is None or self._task is None or self._task.done():
            return None
        if asyncio.get_running_loop().time() - self._last_poll > max(2.0, 4 * self.interval):
            return None  # the polls fail (or stall): not fresh
        return w.snapshot

    async def wait_changed(self, job_id: str, etag: str, timeout: float) -> JobSnapshot | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        version = etag_version(etag, job_id)
        w = self._watches.get(job_id)
        if w is None:
            w = self._watches[job_id] = _Watch()
        w.users += 1
        w.idle_since = None
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name="job-watcher")
        try:
            while True:
                snap = w.snapshot
                if snap is not None and _news(snap, etag, version):
                    return snap
                remaining = deadline - loop.time()
                if remaining <= 0 or self.stopping:
                    return None
                fut: asyncio.Future[None] = loop.create_future()
                w.waiters.add(fut)
                try:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(remaining):
                            await fut
                finally:
                    w.waiters.discard(fut)
        finally:
            w.users -= 1
            if w.users == 0:
                w.idle_since = loop.time()  # dropped by the poll loop after ``linger``

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            for job_id, w in list(self._watches.items()):
                if w.users == 0 and w.idle_since is not None and now - w.idle_since >= self.linger:
                    del self._watches[job_id]
            if not self._watches or self.stopping:
                return
            known = {job_id: (w.latest.etag if w.latest else None) for job_id, w in self._watches.items()}
            try:
                fresh = await asyncio.to_thread(self._poll, known)
            except SQLAlchemyError as exc:  # a database blip: waiters time out or see the next poll
                log.warning("job watcher: %s", str(exc).splitlines()[0])
                fresh = None
            except Exception:
                log.exception("job watcher: reading the watched jobs failed")
                fresh = None
            if fresh is not None:
                self._last_poll = loop.time()
                for job_id, snap in fresh.items():
                    if job_id in self._watches:
                        self._watches[job_id].latest = snap
            now = loop.time()
            for w in self._watches.values():
                if w.latest is not w.snapshot and now - w.notified_at >= self.min_gap:
                    w.snapshot, w.notified_at = w.latest, now
                    self._wake(w)
            await asyncio.sleep(self.interval)

    def _wake(self, w: _Watch) -> None:
        waiting = [f for f in w.waiters if not f.done()]
        if len(waiting) <= self.batch:
            for fut in waiting:
                fut.set_result(None)
            return
        task = asyncio.get_running_loop().create_task(self._wake_paced(waiting), name="job-watcher-wake")
        self._wakers.add(task)
        task.add_done_callback(self._wakers.discard)

    async def _wake_paced(self, waiting: list[asyncio.Future[None]]) -> None:
        """Wake ``batch`` waiters, then let the event loop breathe: the next batch once the loop's thread was
        busy at most ``duty`` of the time since (or after ``max_pause``), so other requests keep flowing."""
        for i in range(0, len(waiting), self.batch):
            if i:
                wall0, cpu0 = time.monotonic(), time.thread_time()
                while True:
                    await asyncio.sleep(self.pace)
                    wall = time.monotonic() - wall0
                    if time.thread_time() - cpu0 <= self.duty * wall or wall >= self.max_pause or self.stopping:
                        break
            for fut in waiting[i:i + self.batch]:
                if not fut.done():  # (timed out meanwhile, or woken by stop())
                    fut.set_result(None)

    def _poll(self, known: dict[str, str | None]) -> dict[str, JobSnapshot]:
        """The watched jobs whose ETag is not ``known``'s: read in full, once each (a worker thread)."""
        self.polls += 1
        ids = list(known)
        query = sa.select(Job.id, Job.version, Job.status, Job.cancel_requested).where(Job.id.in_(ids))
        with self.engine.connect() as conn:
            etags = {r.id: job_etag(r.id, r.version, r.status, r.cancel_requested) for r in conn.execute(query)}
            out = {job_id: GONE_SNAPSHOT for job_id, old in known.items() if job_id not in etags and old != GONE}
            changed = [job_id for job_id, etag in etags.items() if etag != known[job_id]]
            if changed:
                with Session(bind=conn) as session:
                    out.update(self._read(session, changed))
        return out

    def _read(self, session: Session, ids: list[str]) -> dict[str, JobSnapshot]:
        """The shared read: the rows of ``ids`` in one query, each made into a :class:`JobSnapshot`."""
        out: dict[str, JobSnapshot] = {}
        for job in session.scalars(sa.select(Job).where(Job.id.in_(ids))):
            self.reads += 1
            etag = job_etag(job.id, job.version, job.status, job.cancel_requested)
            out[job.id] = JobSnapshot.of(etag, job_detail(job), finished=job.status in FINISHED_STATUSES,
                                         tenant=job.tenant)
        return out


def watcher_for(state: Any, engine: Engine) -> JobWatcher:
    """The process's watcher kept on ``app.state`` (a new one when the event loop changed, as in tests)."""
    loop = asyncio.get_running_loop()
    watcher: JobWatcher | None = getattr(state, "job_watcher", None)
    if watcher is None or watcher.loop is not loop:
        watcher = JobWatcher(engine)
        watcher.loop = loop
        state.job_watcher = watcher
    return watcher
