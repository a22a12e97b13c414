"""The first record schema: studies, their views, reviews, the audit trail.

Revision ID: 0001
Revises:
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("arrived_at", sa.DateTime(), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("bundle_name", sa.String(128), nullable=False),
        sa.Column("bundle_version", sa.String(64), nullable=False),
        sa.Column("operating_point", sa.String(32)),
        sa.Column("body_part", sa.String(32)),
        sa.Column("probability", sa.Float()),
        sa.Column("threshold", sa.Float()),
        sa.Column("result", sa.String(16)),
        sa.Column("refusal", sa.Text()),
        sa.Column("warnings", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("priority_group", sa.Integer(), nullable=False),
        sa.Column("sort_probability", sa.Float(), nullable=False),
    )
    op.create_index("ix_studies_arrived_at", "studies", ["arrived_at"])
    op.create_index("ix_studies_body_part", "studies", ["body_part"])
    op.create_table(
        "views",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "study_id",
            sa.String(32),
            sa.ForeignKey("studies.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("filename", sa.String(80)),
        sa.Column("sop_instance_uid", sa.String(64)),
        sa.Column("probability", sa.Float()),
        sa.Column("threshold", sa.Float()),
        sa.Column("result", sa.String(16)),
        sa.Column("refused", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text()),
    )
    op.create_index("ix_views_study_id", "views", ["study_id"])
    op.create_index("ix_views_filename", "views", ["filename"])
    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "study_id",
            sa.String(32),
            sa.ForeignKey("studies.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("reader", sa.String(64), nullable=False),
        sa.Column("reader_result", sa.String(16), nullable=False),
        sa.Column("note", sa.Text()),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_reviews_study_id", "reviews", ["study_id"])
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("key_name", sa.String(64), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("study_id", sa.String(32)),
        sa.Column("outcome", sa.String(16), nullable=False),
    )
    op.create_index("ix_audit_at", "audit", ["at"])
    op.create_index("ix_audit_study_id", "audit", ["study_id"])


def downgrade() -> None:
    for table in ("audit", "reviews", "views", "studies"):
        op.drop_table(table)
