"""Run the Alembic migrations up to head (called at start-up and by `concordia db upgrade`)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str) -> None:
    """Blocking: run in a thread from async code (Alembic's env runs its own event loop)."""
    command.upgrade(alembic_config(database_url), "head")


@cache
def schema_heads() -> frozenset[str]:
    """The revisions a database at the latest schema is at (read from the migration files)."""
    return frozenset(ScriptDirectory.from_config(alembic_config("")).get_heads())
