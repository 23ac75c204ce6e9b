"""image builds: error, built_at, rootfs_size; submissions by image

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 14:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("error", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("built_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("rootfs_size", sa.BigInteger(), nullable=False, server_default="0")
        )

    op.create_index(op.f("ix_submissions_image_id"), "submissions", ["image_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_submissions_image_id"), table_name="submissions")
    with op.batch_alter_table("images") as batch:
        batch.drop_column("rootfs_size")
        batch.drop_column("built_at")
        batch.drop_column("error")
