"""A candidate bundle's answers in shadow, beside the live ones.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shadow_answers",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("study_id", sa.String(32), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("bundle_name", sa.String(128), nullable=False),
        sa.Column("bundle_version", sa.String(64), nullable=False),
        sa.Column("body_part", sa.String(32)),
        sa.Column("probability", sa.Float()),
        sa.Column("result", sa.String(16)),
        sa.Column("refusal", sa.Text()),
        sa.Column("shadow_ms", sa.Float(), nullable=False),
        sa.Column("live_ms", sa.Float()),
    )
    op.create_index("ix_shadow_answers_study_id", "shadow_answers", ["study_id"])


def downgrade() -> None:
    op.drop_index("ix_shadow_answers_study_id", table_name="shadow_answers")
    op.drop_table("shadow_answers")
