"""Database plumbing: one engine per URL and process, a session that owns a transaction, Optuna's storage.

SQLite gets WAL journal mode and a busy timeout so the API and the worker processes share one file
without "database is locked"; write transactions can start with ``BEGIN IMMEDIATE`` so a reader never
has to upgrade its lock mid-transaction. Postgres (``postgresql+psycopg://``) uses the same code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from app.models import utcnow

__all__ = [
    "SQLITE_BUSY_TIMEOUT_S",
    "RetryingHeartbeatRDBStorage",
    "SlotReleasingRetryCallback",
    "get_engine",
    "make_engine",
    "make_storage",
    "release_slot",
    "session_scope",
]

log = logging.getLogger(__name__)
SQLITE_BUSY_TIMEOUT_S = 30


def _is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _ensure_sqlite_dir(url: str) -> None:
    db = make_url(url).database
    if db and db != ":memory:" and not db.startswith("file:"):
        Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)


def make_engine(url: str) -> Engine:
    """A new engine for ``url`` (SQLite: WAL + busy timeout + foreign keys; all: ``pool_pre_ping``)."""
    if not _is_sqlite(url):
        return sa.create_engine(url, pool_pre_ping=True)
    _ensure_sqlite_dir(url)
    engine = sa.create_engine(
        url, pool_pre_ping=True, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S}
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see _on_begin)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    """The process-wide engine for ``url``."""
    return make_engine(url)


@lru_cache(maxsize=8)
def _sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(engine: Engine, *, write: bool = False) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error.

    ``write=True`` starts the SQLite transaction with ``BEGIN IMMEDIATE`` (take the write lock first,
    wait for it under the busy timeout) instead of upgrading a read lock later.
    """
    session = _sessionmaker(engine)()
    try:
        if write:
            session.connection(execution_options={"sqlite_immediate": True})
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def release_slot(
    engine: Engine, *, study_name: str | None = None, job_id: str | None = None, trial_id: int | None = None
) -> bool:
    """Give back one claimed trial slot of a job (by study name or id); False when none was given back.

    With ``trial_id`` (Optuna's trial id) the release is idempotent: a ``slot_releases`` row keyed by
    (job, trial) is inserted in the same transaction (``ON CONFLICT DO NOTHING``), so the worker whose trial
    was interrupted and the stale-trial callback of another worker cannot both give back its slot.
    """
    from app.models import Job, SlotRelease

    cond = Job.study_name == study_name if study_name is not None else Job.id == job_id
    with session_scope(engine, write=True) as s:
        if trial_id is not None:
            jid = job_id if job_id is not None else s.scalar(sa.select(Job.id).where(cond))
            if jid is None:
                return False
            insert = (_insert_ignore(engine)(SlotRelease.__table__)
                      .values(job_id=jid, trial_id=trial_id, released_at=utcnow())
                      .on_conflict_do_nothing().returning(SlotRelease.trial_id))
            if s.execute(insert).first() is None:
                return False  # released before
        res = s.execute(
            sa.update(Job).where(cond, Job.trials_claimed > 0).values(trials_claimed=Job.trials_claimed - 1)
        )
        return bool(res.rowcount == 1)  # type: ignore[attr-defined]


def _insert_ignore(engine: Engine) -> Any:
    """The dialect's ``insert`` (both have ``on_conflict_do_nothing``)."""
    from sqlalchemy.dialects import postgresql, sqlite

    return postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert


class SlotReleasingRetryCallback:
    """Optuna's heartbeat-stale callback: re-queue the dead trial, then release its job's trial slot.

    Optuna calls it exactly once per stale trial (in whichever process failed it), so the slot the dead
    worker claimed is given back exactly once and the retry (a WAITING trial with the same params) runs
    under a fresh claim.
    """

    def __init__(self, url: str, *, max_retry: int | None = 3) -> None:
        self.url = url
        self._retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        try:
            self._retry(study, trial)
        finally:
            released = release_slot(get_engine(self.url), study_name=study.study_name, trial_id=trial._trial_id)
            log.info("stale trial %s of %s failed; slot released=%s", trial.number, study.study_name, released)


class RetryingHeartbeatRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage whose trial heartbeat survives database blips.

    Optuna's heartbeat thread (``optuna.storages._heartbeat.HeartbeatThread``) calls ``record_heartbeat``
    in a loop with no ``try``: the first failed write ends the thread, the trial goes stale after the grace
    period and another worker fails it although it is alive. Here a failed write is retried a few times with
    back-off (within one heartbeat interval) and then given up until the next beat; it never raises.
    """

    def record_heartbeat(self, trial_id: int) -> None:
        delay, budget = 0.05, max(0.2, (self.heartbeat_interval or 1) / 2)
        started = time.monotonic()
        while True:
            try:
                super().record_heartbeat(trial_id)
                return
            except Exception as exc:  # noqa: BLE001 - never let the heartbeat thread die
                if time.monotonic() - started + delay > budget:
                    log.warning("trial %d: heartbeat not recorded (%s); next beat retries",
                                trial_id, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                    return
                time.sleep(delay)
                delay *= 2


def make_storage(
    url: str, *, heartbeat_interval: int | None = None, grace_period: int | None = None
) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage in the service's database; with a heartbeat when ``heartbeat_interval``."""
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if _is_sqlite(url):
        _ensure_sqlite_dir(url)
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
    from tuner.storage import apply_sqlite_pragmas  # the service's pragmas on Optuna's engine too

    if heartbeat_interval is None:
        return apply_sqlite_pragmas(optuna.storages.RDBStorage(url, engine_kwargs=kwargs))  # type: ignore[return-value]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return apply_sqlite_pragmas(  # type: ignore[return-value]
            RetryingHeartbeatRDBStorage(
                url,
                engine_kwargs=kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=SlotReleasingRetryCallback(url),
            )
        )
