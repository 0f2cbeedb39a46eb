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
    """``migrations/`` next to the source tree (editable install), else in the working directory."""
    for base in (Path(__file__).resolve().parent.parent, Path.cwd()):
        if (base / "migrations" / "env.py").is_file():
            return base / "migrations"
    raise RuntimeError("cannot find the migrations/ folder (run from the project directory)")


def alembic_config(url: str | None = None, *, quiet: bool = True) -> Config:
    """An Alembic config that works from any directory; ``url`` overrides the settings' database URL."""
    mig = _migrations_dir()
    ini = mig.parent / "alembic.ini"
    cfg = Config(str(ini) if ini.is_file() else None)
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
    storage.engine.dispose()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(conn: sa.Connection) -> str | None:
    return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()
