"""datalake: a submission's data-lake choice (scope, dataset, RSE) and datalake_files, the
data outputs of jobs stored in the data lake

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 12:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("submissions") as batch:
        batch.add_column(sa.Column("datalake_scope", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("datalake_dataset", sa.String(length=250), nullable=True))
        batch.add_column(sa.Column("datalake_rse", sa.String(length=128), nullable=True))
    op.create_table(
        "datalake_files",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("job_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("scope", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=250), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("adler32", sa.String(length=8), nullable=False),
        sa.Column("rse", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=1), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_datalake_files_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datalake_files")),
        sa.UniqueConstraint("scope", "name", name="uq_datalake_files_did"),
    )
    op.create_index("ix_datalake_files_job_id", "datalake_files", ["job_id"])


def downgrade() -> None:
    # The records go; the files stay in the data lake (Rucio keeps them).
    op.drop_index("ix_datalake_files_job_id", table_name="datalake_files")
    op.drop_table("datalake_files")
    with op.batch_alter_table("submissions") as batch:
        batch.drop_column("datalake_rse")
        batch.drop_column("datalake_dataset")
        batch.drop_column("datalake_scope")
