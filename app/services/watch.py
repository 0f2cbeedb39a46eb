"""Waiting for a job to change without a database connection or a thread per waiting client.

One :class:`JobWatcher` per process (per event loop) runs one task while anybody waits: every
``interval`` it reads ``id, version, status, cancel_requested`` of all watched jobs in ONE query (in a
worker thread, for the length of that query only) and wakes the waiters of each job whose ETag changed
through an :class:`asyncio.Event`. Long-poll (``GET /jobs/{id}?wait=S``) and the event stream
(``GET /jobs/{id}/events``) both wait here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from app.models import Job
from app.services.summary import job_etag

__all__ = ["GONE", "JobWatcher", "watcher_for"]

log = logging.getLogger(__name__)
GONE = "gone"  # the ETag of a job that was deleted while somebody waited


@dataclass
class _Watch:
    etag: str | None = None  # as of the watcher's last poll (None: not polled yet)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    waiters: int = 0


class JobWatcher:
    """``await watcher.wait_changed(job_id, etag, timeout)``: True once the job's ETag is not ``etag``."""

    def __init__(self, engine: Engine, *, interval: float = 0.25) -> None:
        self.engine, self.interval = engine, interval
        self._watches: dict[str, _Watch] = {}
        self._task: asyncio.Task[None] | None = None
        self.polls = 0  # queries made (for tests and curiosity)
        self.loop: asyncio.AbstractEventLoop | None = None

    async def wait_changed(self, job_id: str, etag: str, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        w = self._watches.setdefault(job_id, _Watch())
        w.waiters += 1
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name="job-watcher")
        try:
            while True:
                if w.etag is not None and w.etag != etag:
                    return True
                event = w.changed
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), remaining)
        finally:
            w.waiters -= 1
            if w.waiters == 0:
                self._watches.pop(job_id, None)

    async def _run(self) -> None:
        while self._watches:
            ids = list(self._watches)
            try:
                etags = await asyncio.to_thread(self._read, ids)
            except SQLAlchemyError as exc:  # a database blip: waiters time out or see the next poll
                log.warning("job watcher: %s", str(exc).splitlines()[0])
                etags = None
            for job_id in ids:
                w = self._watches.get(job_id)
                if w is None or etags is None:
                    continue
                etag = etags.get(job_id, GONE)
                if etag != w.etag:
                    w.etag = etag
                    w.changed.set()
                    w.changed = asyncio.Event()
            await asyncio.sleep(self.interval)

    def _read(self, ids: list[str]) -> dict[str, str]:
        self.polls += 1
        query = sa.select(Job.id, Job.version, Job.status, Job.cancel_requested).where(Job.id.in_(ids))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return {r.id: job_etag(r.id, r.version, r.status, r.cancel_requested) for r in rows}


def watcher_for(state: Any, engine: Engine) -> JobWatcher:
    """The process's watcher kept on ``app.state`` (a new one when the event loop changed, as in tests)."""
    loop = asyncio.get_running_loop()
    watcher: JobWatcher | None = getattr(state, "job_watcher", None)
    if watcher is None or watcher.loop is not loop:
        watcher = JobWatcher(engine)
        watcher.loop = loop
        state.job_watcher = watcher
    return watcher
