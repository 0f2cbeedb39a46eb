"""The service's own tables (jobs, datasets): typed SQLAlchemy 2 models.

Optuna's tables live in the same database but are created and versioned by Optuna itself.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "ACTIVE_STATUSES", "DEFAULT_TENANT", "FINISHED_STATUSES", "ApiKey", "Base", "Dataset", "Job", "JobStatus",
    "SlotRelease", "WorkerRow", "utcnow",
]

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timezone-aware timestamp on every backend (SQLite stores naive UTC; it comes back aware)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; use an aware one (UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: sa.JSON, list[Any]: sa.JSON}  # noqa: RUF012


DEFAULT_TENANT = "default"  # owner of everything made without a key (and of rows older than tenants)


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    finalizing = "finalizing"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


ACTIVE_STATUSES = (JobStatus.queued, JobStatus.running, JobStatus.finalizing)
FINISHED_STATUSES = (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


class Dataset(Base):
    """An uploaded data set, validated on upload and stored under ``uploads_dir``."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True, default=new_id)
    filename: Mapped[str] = mapped_column(sa.String(255))
    path: Mapped[str] = mapped_column(sa.String(1024))
    format: Mapped[str] = mapped_column(sa.String(16))
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    sha256: Mapped[str] = mapped_column(sa.String(64), index=True)
    rows: Mapped[int] = mapped_column(sa.Integer)
    columns: Mapped[int] = mapped_column(sa.Integer)
    feature_names: Mapped[list[Any]] = mapped_column(default=list)
    target: Mapped[str | None] = mapped_column(sa.String(255))
    task: Mapped[str] = mapped_column(sa.String(20))
    class_counts: Mapped[dict[str, Any] | None] = mapped_column()
    missing_values: Mapped[int] = mapped_column(sa.Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    tenant: Mapped[str] = mapped_column(sa.String(64), default=DEFAULT_TENANT, server_default=DEFAULT_TENANT,
                                        index=True)


class Job(Base):
    """A tuning job. Trial slots (``trials_claimed`` < ``n_trials``) make ``n_trials`` exact across workers."""

    __tablename__ = "jobs"
    __table_args__ = (sa.Index("ix_jobs_status_created_at", "status", "created_at"),)

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(sa.String(200))
    status: Mapped[str] = mapped_column(sa.String(20), default=JobStatus.queued.value)
    spec: Mapped[dict[str, Any]] = mapped_column()
    study_name: Mapped[str] = mapped_column(sa.String(255), unique=True)
    dataset_id: Mapped[str | None] = mapped_column(
        sa.String(36), sa.ForeignKey("datasets.id", ondelete="SET NULL"), index=True
    )
    n_trials: Mapped[int] = mapped_column(sa.Integer)
    trials_claimed: Mapped[int] = mapped_column(sa.Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    deadline: Mapped[datetime | None] = mapped_column()
    heartbeat_at: Mapped[datetime | None] = mapped_column()  # the finalising worker's liveness
    error: Mapped[str | None] = mapped_column(sa.Text)
    test_metrics: Mapped[dict[str, Any] | None] = mapped_column()
    best_trial: Mapped[dict[str, Any] | None] = mapped_column()
    finalized_by: Mapped[str | None] = mapped_column(sa.String(255))
    # job-level failures (start, data preparation, finalisation; a worker that died in one of them):
    # after ``Settings.job_max_failures`` the job ends failed with ``last_error``
    failures: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    # How many worker processes opened the job's study: the first (0) seeds its sampler exactly as
    # `tuner run` does (reproducible from the result bundle), later ones get their own seeds.
    study_openers: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    # The summary GET /jobs/{id} answers from (written by app/services/summary.py; migration 0003).
    version: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    progress: Mapped[dict[str, Any] | None] = mapped_column()
    model_path: Mapped[str | None] = mapped_column(sa.String(1024))
    updated_at: Mapped[datetime | None] = mapped_column()

    tenant: Mapped[str] = mapped_column(sa.String(64), default=DEFAULT_TENANT, server_default=DEFAULT_TENANT,
                                        index=True)
    last_claim_at: Mapped[datetime | None] = mapped_column()  # fair share: tenants least recently served first


class WorkerRow(Base):
    """A live worker process: written at start, every ``worker_heartbeat_s``, removed at a clean stop.

    ``phase`` is ``preparing`` or ``finalizing`` while the worker loads a job's data or scores it (written
    before the step starts), so a worker killed there (out of memory) counts as a failure of that job.
    """

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    host: Mapped[str] = mapped_column(sa.String(255))
    pid: Mapped[int] = mapped_column(sa.Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    current_job: Mapped[str | None] = mapped_column(sa.String(36))
    phase: Mapped[str | None] = mapped_column(sa.String(20))


class SlotRelease(Base):
    """One row per trial whose claimed slot was given back: the primary key makes a release idempotent."""

    __tablename__ = "slot_releases"

    job_id: Mapped[str] = mapped_column(
        sa.String(36), sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    trial_id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    released_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """An API key: only its SHA-256 is stored; ``prefix`` (its first characters) identifies it in lists."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(sa.String(200))
    tenant: Mapped[str] = mapped_column(sa.String(64), default=DEFAULT_TENANT)
    is_admin: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    key_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    prefix: Mapped[str] = mapped_column(sa.String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()
