"""IAM accounts: users' issuer, subject, groups, SCIM reading; encrypted user secrets

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 17:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("issuer", sa.String(256), nullable=True))
        batch.add_column(sa.Column("subject", sa.String(256), nullable=True))
        batch.add_column(sa.Column("groups", sa.JSON(), nullable=False, server_default="[]"))
        batch.add_column(sa.Column("scim", sa.JSON(), nullable=False, server_default="{}"))
        batch.create_index("ix_users_issuer_subject", ["issuer", "subject"], unique=True)

    op.create_table(
        "user_secrets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("ciphertext", sa.Text(), nullable=False),
        sa.Column("info", sa.JSON(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_user_secrets_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_secrets")),
        sa.UniqueConstraint("user_id", "kind", name="uq_user_secrets_user_kind"),
    )


def downgrade() -> None:
    op.drop_table("user_secrets")
    with op.batch_alter_table("users") as batch:
        batch.drop_index("ix_users_issuer_subject")
        batch.drop_column("scim")
        batch.drop_column("groups")
        batch.drop_column("subject")
        batch.drop_column("issuer")
