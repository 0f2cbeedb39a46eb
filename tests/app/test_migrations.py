"""Migrations: upgrade from empty to head, idempotent, and the models match (empty autogenerate diff)."""

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from app.db import get_engine
from app.migrate import VERSION_TABLE, current_revision, head_revision, include_object, upgrade
from app.models import Base


def test_upgrade_from_empty_and_idempotent(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    upgrade(url)
    upgrade(url)
    tables = set(sa.inspect(get_engine(url)).get_table_names())
    assert {"jobs", "datasets", VERSION_TABLE, "studies", "trials", "alembic_version"} <= tables


def test_at_head_and_no_autogenerate_diff(db_url):
    with get_engine(db_url).connect() as conn:
        assert current_revision(conn) == head_revision() is not None
        ctx = MigrationContext.configure(conn, opts={"include_object": include_object, "compare_type": True})
        assert compare_metadata(ctx, Base.metadata) == []


def test_optuna_keeps_its_own_version_table(db_url):
    with get_engine(db_url).connect() as conn:
        optuna_rev = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
        ours = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar_one()
    assert ours == head_revision() and optuna_rev != ours
