"""image_users: who asked for each image, under which VO (images are no longer seen by all)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "image_users",
        sa.Column("image_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("vo", sa.String(length=64), nullable=False),
        sa.Column("asked_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"],
            ["images.id"],
            name=op.f("fk_image_users_image_id_images"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_image_users_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("image_id", "user_id", "vo", name=op.f("pk_image_users")),
    )
    op.create_index(op.f("ix_image_users_user_id"), "image_users", ["user_id"])
    # The users of existing images: who submitted jobs in them, under the submission's VO.
    op.execute(
        "INSERT INTO image_users (image_id, user_id, vo, asked_at) "
        "SELECT image_id, owner_id, vo, MIN(created_at) FROM submissions "
        "WHERE image_id IS NOT NULL GROUP BY image_id, owner_id, vo"
    )
    # Images no submission used were asked for by someone nobody recorded: they stay seen
    # by every user, as they were before (nothing disappears from a catalogue).
    op.execute(
        "INSERT INTO image_users (image_id, user_id, vo, asked_at) "
        "SELECT images.id, users.id, '', images.created_at FROM images CROSS JOIN users "
        "WHERE images.status != 'deleted' AND NOT EXISTS "
        "(SELECT 1 FROM submissions WHERE submissions.image_id = images.id)"
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_image_users_user_id"), table_name="image_users")
    op.drop_table("image_users")
