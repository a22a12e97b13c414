"""Views keep the name their sender gave them (the page: the file's name); a reader's
review can be amended, the earlier one kept and marked replaced.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("views") as table:
        table.add_column(sa.Column("label", sa.String(128), nullable=True))
    with op.batch_alter_table("reviews") as table:
        table.add_column(sa.Column("amends", sa.Integer(), nullable=True))
        table.add_column(sa.Column("replaced_by", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reviews") as table:
        table.drop_column("replaced_by")
        table.drop_column("amends")
    with op.batch_alter_table("views") as table:
        table.drop_column("label")
