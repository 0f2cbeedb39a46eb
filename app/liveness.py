"""Worker liveness: the ``workers`` heartbeat rows, what counts as alive, the queue depth, and the
job-level failure count that bounds retries of a job whose preparation or finalisation keeps failing.

Used by the worker (register, beat, reap the dead), by ``/readyz`` (workers alive, queue depth) and by
cancel/delete (a job whose workers are all gone can be cleared at once).
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.db import session_scope
from app.models import Job, JobStatus, WorkerRow, utcnow
from app.services.summary import bump_version

__all__ = [
    "count_failure",
    "live_workers",
    "queue_depth",
    "reap_dead_workers",
    "register_worker",
    "set_phase",
    "unregister_worker",
    "worker_beat",
]

log = logging.getLogger(__name__)
_ERROR_CHARS = 10_000


def register_worker(engine: Engine, worker_id: str) -> None:
    """Insert (or refresh) this worker's row."""
    now = utcnow()
    with session_scope(engine, write=True) as s:
        s.execute(sa.delete(WorkerRow).where(WorkerRow.id == worker_id))
        s.add(WorkerRow(id=worker_id, host=socket.gethostname(), pid=os.getpid(), started_at=now, heartbeat_at=now))


def worker_beat(engine: Engine, worker_id: str, current_job: str | None) -> None:
    """Refresh the heartbeat (re-inserting the row if a reaper removed it while the database was away)."""
    with session_scope(engine, write=True) as s:
        res = s.execute(sa.update(WorkerRow).where(WorkerRow.id == worker_id)
                        .values(heartbeat_at=utcnow(), current_job=current_job))
        if res.rowcount == 0:  # type: ignore[attr-defined]
            now = utcnow()
            s.add(WorkerRow(id=worker_id, host=socket.gethostname(), pid=os.getpid(), started_at=now,
                            heartbeat_at=now, current_job=current_job))


def set_phase(engine: Engine, worker_id: str, job_id: str | None, phase: str | None) -> None:
    """Say what this worker does now (written before a step that could kill the process)."""
    with session_scope(engine, write=True) as s:
        s.execute(sa.update(WorkerRow).where(WorkerRow.id == worker_id)
                  .values(current_job=job_id, phase=phase, heartbeat_at=utcnow()))


def unregister_worker(engine: Engine, worker_id: str) -> None:
    with session_scope(engine, write=True) as s:
        s.execute(sa.delete(WorkerRow).where(WorkerRow.id == worker_id))


def live_workers(session: Session, grace_period: float) -> int:
    """Workers whose heartbeat is younger than the grace period."""
    cutoff = utcnow() - timedelta(seconds=grace_period)
    return int(session.scalar(sa.select(sa.func.count()).select_from(WorkerRow)
                              .where(WorkerRow.heartbeat_at >= cutoff)) or 0)


def queue_depth(session: Session) -> int:
    """Jobs a worker could take: queued, or running with a free trial slot."""
    waiting = sa.or_(
        Job.status == JobStatus.queued.value,
        sa.and_(Job.status == JobStatus.running.value, Job.trials_claimed < Job.n_trials,
                Job.cancel_requested.is_(False)),
    )
    return int(session.scalar(sa.select(sa.func.count()).select_from(Job).where(waiting)) or 0)


def count_failure(session: Session, job_id: str, message: str, max_failures: int, *,
                  back_to: JobStatus | None = None, only_if: sa.ColumnElement[bool] | None = None) -> bool:
    """Count one job-level failure; the job ends ``failed`` with ``message`` at ``max_failures``.

    ``back_to`` is the status the job returns to otherwise (e.g. ``running`` after a failed finalisation);
    ``only_if`` narrows the row that may be changed. Returns True when the job was failed now.
    """
    job = session.get(Job, job_id, with_for_update=session.bind.dialect.name == "postgresql")  # type: ignore[union-attr]
    if job is None or job.status not in (JobStatus.queued, JobStatus.running, JobStatus.finalizing):
        return False
    failures = job.failures + 1
    final = failures >= max_failures
    # a version bump: GET /jobs/{id} shows failures and last_error, so its ETag must change with them
    values: dict[str, object] = {"failures": failures, "last_error": message[:_ERROR_CHARS], **bump_version()}
    if final:
        reason = message if failures == 1 else f"{message} (failed {failures} times)"
        values.update(status=JobStatus.failed.value, error=reason[:_ERROR_CHARS], finished_at=utcnow())
    elif back_to is not None:
        values.update(status=back_to.value, finalized_by=None, heartbeat_at=None)
    stmt = sa.update(Job).where(Job.id == job_id, Job.failures == job.failures).values(**values)
    if only_if is not None:
        stmt = stmt.where(only_if)
    if session.execute(stmt).rowcount != 1:  # type: ignore[attr-defined]
        return False  # someone else counted or finished it meanwhile
    log.warning("job %s: failure %d/%d: %s", job_id, failures, max_failures, message)
    return final


def reap_dead_workers(engine: Engine, grace_period: float, max_failures: int) -> int:
    """Remove the rows of workers silent for the grace period; a worker that died while preparing or
    finalising a job (e.g. killed for memory) counts as a failure of that job. Returns how many were reaped."""
    cutoff = utcnow() - timedelta(seconds=grace_period)
    with session_scope(engine) as s:
        dead = list(s.execute(sa.select(WorkerRow.id, WorkerRow.heartbeat_at, WorkerRow.current_job, WorkerRow.phase)
                              .where(WorkerRow.heartbeat_at < cutoff)))
    reaped = 0
    for row in dead:
        with session_scope(engine, write=True) as s:
            gone = s.execute(sa.delete(WorkerRow).where(WorkerRow.id == row.id,
                                                        WorkerRow.heartbeat_at == row.heartbeat_at))
            if gone.rowcount != 1:  # type: ignore[attr-defined]
                continue  # it came back, or another worker reaped it
            reaped += 1
            log.warning("worker %s: no heartbeat since %s, removed", row.id, row.heartbeat_at)
            if row.current_job and row.phase == "preparing":
                count_failure(s, row.current_job, f"worker {row.id} died while loading the data (out of memory?)",
                              max_failures)
    return reaped
