"""Persistence: SQLAlchemy 2 tables, the engine, small query helpers, Alembic migrations."""
