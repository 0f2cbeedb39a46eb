"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter
from sqlalchemy.orm import Session

from app.api.deps import EngineDep, SettingsDep
from app.errors import NotReady
from app.liveness import live_workers, queue_depth
from app.migrate import current_revision, head_revision

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(engine: EngineDep, settings: SettingsDep) -> dict[str, Any]:
    """The database is reachable and its schema is at the latest migration (else 503).

    Also says how many workers are alive (a heartbeat within the grace period) and how many jobs wait for
    one (queued, or running with a free trial slot); no live worker is not a 503: the API still serves.
    """
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
            current = current_revision(conn)
    except sa.exc.SQLAlchemyError as exc:
        raise NotReady(f"database unreachable: {type(exc).__name__}") from None
    head = head_revision()
    if current != head:
        raise NotReady(f"database schema at {current or 'nothing'}, expected {head}; run `tuner migrate`")
    try:
        with Session(engine) as s:
            alive, depth = live_workers(s, settings.grace_period), queue_depth(s)
    except sa.exc.SQLAlchemyError as exc:
        raise NotReady(f"database unreachable: {type(exc).__name__}") from None
    return {"status": "ready", "revision": str(head), "workers_alive": alive, "queue_depth": depth}
