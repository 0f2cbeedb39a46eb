"""Schema management: ``tuner migrate`` (Alembic upgrade to head, then Optuna's own tables) and the
readiness check (is the database at head?)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

__all__ = ["VERSION_TABLE", "alembic_config", "current_revision", "head_revision", "include_object", "upgrade"]

VERSION_TABLE = "tuneserve_alembic_version"


def _migrations_dir() -> Path:
    """``app/migrations/``: shipped inside the package, so ``tuner migrate`` works after ``pip install .``."""
    mig = Path(__file__).resolve().parent / "migrations"
    if not (mig / "env.py").is_file():
        raise RuntimeError(f"the migrations are missing from the installed package ({mig})")
    return mig


def alembic_config(url: str | None = None, *, quiet: bool = True) -> Config:
    """An Alembic config that works from any directory; ``url`` overrides the settings' database URL."""
    mig = _migrations_dir()
    cfg = Config()
    cfg.set_main_option("script_location", str(mig))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["quiet"] = quiet
    return cfg


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Autogenerate looks at the service's tables only (Optuna's are Optuna's business)."""
    from app.models import Base

    if type_ == "table":
        return name in Base.metadata.tables
    table = getattr(obj, "table", None)
    if table is not None:
        return table.name in Base.metadata.tables
    return True


def upgrade(url: str, *, quiet: bool = True) -> None:
    """Upgrade the service's tables to head and create Optuna's (idempotent)."""
    command.upgrade(alembic_config(url, quiet=quiet), "head")
    from app.db import make_storage

    storage = make_storage(url)  # creates Optuna's tables and records its schema version
    try:
        if storage.get_current_version() != storage.get_head_version():
            storage.upgrade()  # what `optuna storage upgrade` does, for a database made by an older Optuna
    finally:
        storage.engine.dispose()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(conn: sa.Connection) -> str | None:
    return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()
