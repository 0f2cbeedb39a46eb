"""job summary columns for O(1) polling

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23

A placeholder reserved for the job-summary (issue 10/11) work so that parallel branches keep one linear history;
it changes nothing until that work fills it in.
"""

from collections.abc import Sequence

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
