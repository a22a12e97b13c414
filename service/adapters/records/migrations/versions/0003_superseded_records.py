"""A study answered again (a late instance, new pixels under a known SOP Instance UID)
replaces its earlier record instead of adding a second unread one.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studies") as table:
        table.add_column(sa.Column("replaces", sa.String(32), nullable=True))
        table.add_column(sa.Column("superseded_by", sa.String(32), nullable=True))
    op.create_index("ix_studies_superseded_by", "studies", ["superseded_by"])


def downgrade() -> None:
    op.drop_index("ix_studies_superseded_by", table_name="studies")
    with op.batch_alter_table("studies") as table:
        table.drop_column("superseded_by")
        table.drop_column("replaces")
