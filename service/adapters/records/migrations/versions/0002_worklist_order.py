"""An index in the worklist's order, so a page of 10,000 studies is an index range scan.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_studies_priority",
        "studies",
        ["status", "priority_group", sa.text("sort_probability DESC"), "arrived_at", "id"],
    )


def downgrade() -> None:
    op.drop_index("ix_studies_priority", table_name="studies")
