"""The job summary on the job row: what ``GET /jobs/{id}`` answers from, with one primary-key read.

The worker calls :func:`refresh_summary` at the start (:func:`refreshing_first`) and end of every trial
(:class:`SummaryCallback`, an Optuna callback) and after every status change. It recounts the study with
the aggregate SQL of :mod:`app.studies` and writes counts, best trial and model path on the row, bumping
``version``.
Counting and writing happen in one write transaction that first locks the job row, so of two workers
refreshing at once the later one always writes counts that include the earlier one's trial.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.trial import FrozenTrial
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from app.db import session_scope
from app.models import Job, utcnow
from app.studies import read_summary

__all__ = ["SummaryCallback", "bump_version", "job_etag", "refresh_summary", "refreshing_first",
           "summary_values", "try_refresh"]

log = logging.getLogger(__name__)


def refresh_summary(engine: Engine, job_id: str) -> int | None:
    """Recount the job's study and write the summary on its row; the new ``version`` (None: no such job)."""
    with session_scope(engine, write=True) as s:
        found = _summary_update(s, job_id)
        if found is None:
            return None
        version, values = found
        s.execute(sa.update(Job).where(Job.id == job_id).values(**values))
        return version


def summary_values(session: Any, job_id: str) -> dict[str, Any]:
    """The summary columns and a version bump for an UPDATE of the job row in ``session``'s write
    transaction (the row is locked first, as :func:`refresh_summary` does), so a status change and the
    summary it implies (a finished job's counts, best trial and model path) become visible together.
    Empty when there is no such job."""
    found = _summary_update(session, job_id)
    return found[1] if found is not None else {}


def _summary_update(session: Any, job_id: str) -> tuple[int, dict[str, Any]] | None:
    """Lock the job row, recount its study: ``(new version, column values)``, or None (no such job)."""
    row = session.execute(
        sa.select(Job.study_name, Job.version).where(Job.id == job_id).with_for_update()
    ).first()
    if row is None:
        return None
    summary = read_summary(session, row.study_name)
    return int(row.version) + 1, {
        "progress": summary["counts"] or None, "best_trial": _jsonable(summary["best_trial"]),
        "model_path": summary["model_path"], **bump_version(),
    }


def bump_version() -> dict[str, Any]:
    """``.values(**bump_version())`` for any other UPDATE that changes what ``GET /jobs/{id}`` shows."""
    return {"version": Job.version + 1, "updated_at": utcnow()}


def job_etag(job_id: str, version: int, status: str, cancel_requested: bool) -> str:
    """The strong ETag of ``GET /jobs/{id}``: the summary's version, plus the status and cancel flag so a
    status change written without a version bump still changes it."""
    return f'"{job_id}-{version}-{status}{"-c" if cancel_requested else ""}"'


class SummaryCallback:
    """``study.optimize(..., callbacks=[SummaryCallback(engine, job_id)])``: refresh after each trial.

    A database error is logged, never raised: the trial is already stored, and an exception here would
    make the worker treat it as lost (and give its slot back).
    """

    def __init__(self, engine: Engine, job_id: str) -> None:
        self.engine, self.job_id = engine, job_id

    def __call__(self, _study: optuna.Study, _trial: FrozenTrial) -> None:
        try_refresh(self.engine, self.job_id)


def refreshing_first(
    objective: Callable[[optuna.Trial], float], engine: Engine, job_id: str
) -> Callable[[optuna.Trial], float]:
    """The objective, refreshing the summary as each trial starts (Optuna has no trial-start callback), so
    ``progress.running`` counts the trial that now trains."""

    def run(trial: optuna.Trial) -> float:
        try_refresh(engine, job_id)
        return objective(trial)

    return run


def try_refresh(engine: Engine, job_id: str) -> None:
    """:func:`refresh_summary`, logging instead of raising database errors (the next refresh catches up)."""
    try:
        refresh_summary(engine, job_id)
    except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
        log.warning("job %s: summary not refreshed: %s", job_id, str(exc).splitlines()[0])


def _jsonable(best: dict[str, Any] | None) -> dict[str, Any] | None:
    import math

    if best is None:
        return None
    value = best.get("value")
    return {**best, "value": value if value is None or math.isfinite(value) else None}
