"""job summary columns for O(1) polling

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23

``GET /jobs/{id}`` answers from a summary the worker writes on the job row (``app/services/summary.py``):
trial counts by state (``progress``), the best trial (the existing ``best_trial`` column, now kept up to
date while the job runs), the model's path, the last change time and a ``version`` that grows with every
change (the ETag). Existing rows get their counts from Optuna's tables once, here.
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("version", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("progress", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("model_path", sa.String(length=1024), nullable=True))
        batch.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
    _backfill_counts()


def _backfill_counts() -> None:
    """Counts for jobs submitted before this revision (their next trial or status change does the rest)."""
    conn = op.get_bind()
    if not sa.inspect(conn).has_table("trials"):
        return
    jobs = conn.execute(sa.text(
        "SELECT j.id, s.study_id FROM jobs j JOIN studies s ON s.study_name = j.study_name"
    )).all()
    for job_id, sid in jobs:
        by_state = {str(st).rsplit(".", 1)[-1].upper(): int(n) for st, n in conn.execute(
            sa.text("SELECT state, COUNT(*) FROM trials WHERE study_id = :sid GROUP BY state"), {"sid": sid})}
        config_failed = int(conn.execute(sa.text(
            "SELECT COUNT(*) FROM trials t JOIN trial_system_attributes a ON a.trial_id = t.trial_id"
            " WHERE t.study_id = :sid AND t.state = 'FAIL' AND a.key = 'failure' AND a.value_json = :v"
        ), {"sid": sid, "v": json.dumps("config")}).scalar() or 0)
        counts = {"complete": by_state.get("COMPLETE", 0), "pruned": by_state.get("PRUNED", 0),
                  "failed": by_state.get("FAIL", 0) - config_failed, "config_failed": config_failed,
                  "running": by_state.get("RUNNING", 0), "waiting": by_state.get("WAITING", 0)}
        counts["counted"] = counts["complete"] + counts["pruned"] + config_failed
        conn.execute(sa.text("UPDATE jobs SET progress = :p, version = 1 WHERE id = :id"),
                     {"p": json.dumps(counts), "id": job_id})


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("updated_at")
        batch.drop_column("model_path")
        batch.drop_column("progress")
        batch.drop_column("version")
