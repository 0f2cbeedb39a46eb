"""study openers (per-process sampler seeds)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23

``jobs.study_openers`` counts the worker processes that opened a job's study: the first one seeds its
sampler as ``tuner run`` does, every later one gets a seed of its own (issue 9: no duplicate proposals).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("study_openers", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("study_openers")
