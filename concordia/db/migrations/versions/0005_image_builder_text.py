"""images.builder as text: a builder's description (podman with its bases) outgrows 64
characters, which PostgreSQL refuses where SQLite kept them

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 16:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _sqlite() -> bool:
    # SQLite never enforced the length; changing the type would copy the table (referenced
    # by submissions and image users) for nothing.
    return op.get_context().dialect.name == "sqlite"


def upgrade() -> None:
    if not _sqlite():
        op.alter_column("images", "builder", type_=sa.Text(), existing_type=sa.String(64))


def downgrade() -> None:
    if not _sqlite():
        op.alter_column("images", "builder", type_=sa.String(64), existing_type=sa.Text())
