"""API keys and tenants

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23

Jobs and data sets get an owner (``tenant``; existing rows belong to ``default``), jobs the time a worker
last claimed one of their trials (fair share), and the ``api_keys`` table holds key hashes.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("tenant", sa.String(length=64), server_default="default", nullable=False))
        batch.add_column(sa.Column("last_claim_at", TS, nullable=True))
        batch.create_index(batch.f("ix_jobs_tenant"), ["tenant"])
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("tenant", sa.String(length=64), server_default="default", nullable=False))
        batch.create_index(batch.f("ix_datasets_tenant"), ["tenant"])
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )


def downgrade() -> None:
    op.drop_table("api_keys")
    with op.batch_alter_table("datasets") as batch:
        batch.drop_index(batch.f("ix_datasets_tenant"))
        batch.drop_column("tenant")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index(batch.f("ix_jobs_tenant"))
        batch.drop_column("last_claim_at")
        batch.drop_column("tenant")
