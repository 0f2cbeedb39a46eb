"""Per-tenant quotas (``TUNER_QUOTA_*``): active jobs and queued trials (429), upload bytes stored (413).

Checked before a job or an upload is accepted. The job quotas are exact under concurrent submissions: the
check and the job's INSERT share one write transaction, serialised per tenant (SQLite: ``BEGIN IMMEDIATE``
serialises every write transaction; Postgres: a transaction-scoped advisory lock on the tenant). The
upload quota is checked before the body streams in (from ``Content-Length``), while it streams (the
room left), and finally in the transaction that records the upload, under the same per-tenant
serialisation (:func:`check_upload_fits`): two uploads racing cannot both take the last room.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.errors import PayloadTooLarge, QuotaExceeded
from app.models import Dataset, Job, JobStatus
from app.services.tenancy import Principal

__all__ = ["check_job", "check_upload_fits", "upload_quota_error", "upload_room"]

_WAITING = (JobStatus.queued.value, JobStatus.running.value)


def check_job(session: Session, principal: Principal, n_trials: int, settings: Settings) -> None:
    """429 with ``Retry-After`` if the tenant has too many jobs waiting or running, or too many trials queued.

    Call it in the write transaction that inserts the job: on Postgres it takes the tenant's advisory lock
    (held to the end of that transaction), so a concurrent submission of the same tenant counts this job.
    """
    _serialise_tenant(session, principal.tenant)
    active, queued = session.execute(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(Job.n_trials - Job.trials_claimed), 0))
        .where(Job.tenant == principal.tenant, Job.status.in_(_WAITING))
    ).one()
    tenant = principal.tenant
    if active >= settings.quota_active_jobs:
        raise QuotaExceeded(
            f"tenant '{tenant}' has {active} queued or running jobs, the most allowed "
            f"(TUNER_QUOTA_ACTIVE_JOBS={settings.quota_active_jobs}); wait for one to finish or cancel one",
            retry_after_s=settings.quota_retry_after_s)
    if queued + n_trials > settings.quota_queued_trials:
        raise QuotaExceeded(
            f"tenant '{tenant}' has {queued} trials queued; {n_trials} more would exceed the quota of "
            f"{settings.quota_queued_trials} (TUNER_QUOTA_QUEUED_TRIALS)",
            retry_after_s=settings.quota_retry_after_s)


def _serialise_tenant(session: Session, tenant: str) -> None:
    """Postgres: take the tenant's quota lock until the end of ``session``'s transaction, so a concurrent
    request of the same tenant counts what this one writes. SQLite write transactions (``BEGIN
    IMMEDIATE``) are serialised already."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"tuneserve-quota:{tenant}"})


def _used_bytes(session: Session, tenant: str) -> int:
    return int(session.scalar(
        sa.select(sa.func.coalesce(sa.func.sum(Dataset.size_bytes), 0)).where(Dataset.tenant == tenant)
    ) or 0)


def check_upload_fits(session: Session, principal: Principal, settings: Settings, size: int) -> None:
    """413 unless ``size`` more bytes fit in the tenant's quota. Call it in the write transaction that
    records the upload (it serialises the tenant's quota checks on Postgres)."""
    _serialise_tenant(session, principal.tenant)
    used = _used_bytes(session, principal.tenant)
    if used + size > settings.quota_upload_bytes:
        raise upload_quota_error(principal, settings, used)


def upload_room(session: Session, principal: Principal, settings: Settings, announced: int | None) -> int:
    """Bytes the tenant may still upload; 413 now if it is full or ``announced`` (Content-Length) won't fit."""
    used = _used_bytes(session, principal.tenant)
    room = settings.quota_upload_bytes - used
    if room <= 0 or (announced is not None and announced > room + 4096):  # 4 KiB: multipart framing
        raise upload_quota_error(principal, settings, used)
    return room


def upload_quota_error(principal: Principal, settings: Settings, used: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"tenant '{principal.tenant}' stores {used / 2**20:.2f} MiB of uploads and this file does not fit in "
        f"the quota of {settings.quota_upload_mb:g} MiB (TUNER_QUOTA_UPLOAD_MB): delete data sets first")
