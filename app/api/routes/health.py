"""Liveness and readiness."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter

from app.api.deps import EngineDep
from app.errors import NotReady
from app.migrate import current_revision, head_revision

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(engine: EngineDep) -> dict[str, str]:
    """The database is reachable and its schema is at the latest migration (else 503)."""
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
            current = current_revision(conn)
    except sa.exc.SQLAlchemyError as exc:
        raise NotReady(f"database unreachable: {type(exc).__name__}") from None
    head = head_revision()
    if current != head:
        raise NotReady(f"database schema at {current or 'nothing'}, expected {head}; run `tuner migrate`")
    return {"status": "ready", "revision": str(head)}
