"""Optuna storages for ``tuner run``: SQLite pragmas, and a shared file for several processes.

A SQLite file used by several processes (``tuner run --jobs N``, the service's API and workers) wants
WAL journal mode (readers never block the writer), ``synchronous=NORMAL`` (one fsync per checkpoint
instead of per commit; safe with WAL) and a busy timeout instead of "database is locked".
"""

from __future__ import annotations

from typing import Any

import optuna
from sqlalchemy import event

__all__ = ["SQLITE_BUSY_TIMEOUT_MS", "apply_sqlite_pragmas", "open_storage"]

SQLITE_BUSY_TIMEOUT_MS = 30_000


def _on_connect(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.close()


def apply_sqlite_pragmas(storage: optuna.storages.BaseStorage) -> optuna.storages.BaseStorage:
    """Give an RDB storage on SQLite the pragmas above on every connection; other storages unchanged."""
    backend = getattr(storage, "_backend", storage)
    engine = getattr(backend, "engine", None)
    if not isinstance(backend, optuna.storages.RDBStorage) or engine is None or engine.dialect.name != "sqlite":
        return storage
    database = engine.url.database or ""
    if database in ("", ":memory:") or database.startswith("file::memory:") or "mode=memory" in str(engine.url):
        return storage  # an in-memory database: nothing to share, and a reconnect would lose it
    if not event.contains(engine, "connect", _on_connect):
        event.listen(engine, "connect", _on_connect)
        engine.dispose()  # connections opened while Optuna created its tables reconnect with the pragmas
    return storage


def open_storage(storage: str | optuna.storages.BaseStorage | None) -> optuna.storages.BaseStorage | None:
    """A storage URL -> Optuna's storage with the SQLite pragmas; ``None`` (in memory) stays ``None``."""
    if isinstance(storage, str):
        if storage.startswith("sqlite"):
            return apply_sqlite_pragmas(
                optuna.storages.RDBStorage(storage, engine_kwargs={"connect_args": {"timeout": 30}})
            )
        return optuna.storages.get_storage(storage)
    return storage
