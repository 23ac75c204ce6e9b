"""The deployment guide followed as written: `concordia db upgrade` run by several units at
once, and by the service's system user, which has no home and may not make the data dir."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from concordia.db.migrate import schema_heads
from tests.database import _admin, fetch_value, pg_url, run_sync

pytestmark = [pytest.mark.real, pytest.mark.postgres]

#: A system user with no home (/nonexistent), as `useradd --system` makes the service's.
SYSTEM_USER = "nobody"
SYSTEM_UID = 65534


@pytest.fixture
def empty_database() -> Iterator[str]:
    """A new, empty PostgreSQL database (no schema yet); its SQLAlchemy URL."""
    name = f"concordia_new_{uuid.uuid4().hex[:12]}"
    run_sync(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield pg_url(name)
    finally:
        run_sync(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def upgrade_command(*, as_system_user: bool = False) -> list[str]:
    command = [sys.executable, "-m", "concordia", "db", "upgrade"]
    if not as_system_user:
        return command
    # The test's interpreter may sit in root's home: the user may read and search any
    # directory (CAP_DAC_READ_SEARCH) to run it, and write only where its uid may.
    user = [f"--reuid={SYSTEM_UID}", f"--regid={SYSTEM_UID}", "--clear-groups"]
    reach = ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
    return ["setpriv", *user, *reach, "--", *command]


def test_db_upgrades_run_together_on_a_new_database_all_succeed(
    empty_database: str, tmp_path: Path
) -> None:
    # Each unit runs `db upgrade` before it starts: web and worker units (on several hosts)
    # started together after an upgrade all migrate the same new database.
    env = {**os.environ, "CONCORDIA_DATABASE_URL": empty_database}
    output = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    runs = [subprocess.Popen(upgrade_command(), env=env, cwd=tmp_path, **output) for _ in range(3)]
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output
        assert "database is up to date: PostgreSQL" in output
    [head] = schema_heads()
    assert fetch_value(empty_database, "SELECT version_num FROM alembic_version") == head
    assert fetch_value(empty_database, "SELECT count(*) FROM alembic_version") == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="runs a command as another user: needs root")
def test_db_upgrade_as_the_service_user_needs_no_data_dir_on_postgresql(
    empty_database: str, tmp_path: Path
) -> None:
    # As the unit runs it: the service's user, no home, the data dir not made yet (root's
    # directory above it), the database URL a credential, the other settings in the file.
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "CONCORDIA_DATABASE_URL").write_text(empty_database + "\n")
    subprocess.run(["chown", "-R", SYSTEM_USER, str(credentials)], check=True)
    config = tmp_path / "concordia.toml"
    config.write_text('local_isolation = "bwrap"\n')
    config.chmod(0o644)
    data_dir = tmp_path / "var-lib" / "concordia"
    data_dir.parent.mkdir(mode=0o755)
    env = {
        **os.environ,
        "HOME": "/nonexistent",
        "CREDENTIALS_DIRECTORY": str(credentials),
        "CONCORDIA_CONFIG_FILE": str(config),
        "CONCORDIA_DATA_DIR": str(data_dir),
    }
    env.pop("CONCORDIA_DATABASE_URL", None)  # the credential's, not the test suite's
    result = subprocess.run(
        upgrade_command(as_system_user=True), env=env, cwd="/", capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "database is up to date: PostgreSQL" in result.stdout
    assert not data_dir.exists()  # PostgreSQL keeps the schema; nothing was written here
    [head] = schema_heads()
    assert fetch_value(empty_database, "SELECT version_num FROM alembic_version") == head
