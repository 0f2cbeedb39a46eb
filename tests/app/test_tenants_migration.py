"""Migration 0005 (issue 13): rows from before tenants belong to ``default``; downgrade removes it all."""

from __future__ import annotations

import os
import uuid

import pytest
import sqlalchemy as sa
from alembic import command

from app.migrate import alembic_config


@pytest.fixture(params=["sqlite", "postgres"])
def fresh_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    base = os.environ.get("TUNER_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("TUNER_TEST_POSTGRES_URL not set")
    name = f"tuneserve_mig_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield sa.engine.make_url(base).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_existing_rows_go_to_tenant_default(fresh_url):
    cfg = alembic_config(fresh_url)
    command.upgrade(cfg, "0004")
    engine = sa.create_engine(fresh_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO datasets (id, filename, path, format, size_bytes, sha256, rows, columns, feature_names,"
                " task, missing_values, created_at) VALUES ('d1', 'a.csv', '/x', 'csv', 1, 'h', 1, 1, '[]',"
                " 'classification', 0, CURRENT_TIMESTAMP)"))
            conn.execute(sa.text(
                "INSERT INTO jobs (id, name, status, spec, study_name, n_trials, trials_claimed, cancel_requested,"
                " created_at) VALUES ('j1', 'old', 'succeeded', '{}', 'job-j1', 1, 1, false, CURRENT_TIMESTAMP)"))
        command.upgrade(cfg, "head")
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT tenant, last_claim_at FROM jobs")).one() == ("default", None)
            assert conn.execute(sa.text("SELECT tenant FROM datasets")).scalar_one() == "default"
            assert conn.execute(sa.text("SELECT count(*) FROM api_keys")).scalar_one() == 0
        command.downgrade(cfg, "0004")
        inspector = sa.inspect(engine)
        assert "api_keys" not in inspector.get_table_names()
        assert "tenant" not in {c["name"] for c in inspector.get_columns("jobs")}
    finally:
        engine.dispose()
