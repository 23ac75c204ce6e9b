"""jobs.worker: the slot of the worker that took a job, so that workers run side by side on
PostgreSQL, each with its own jobs, and adopt those of a worker that died

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 23:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # NULL for the jobs of before: the first worker to start adopts those still under way.
    op.add_column("jobs", sa.Column("worker", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("worker")
