"""The deployment files: Containerfile, systemd units and docs/deployment.md agree with the
project (Makefile's system packages, files that exist, settings that exist)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from concordia.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
CONTAINERFILE = ROOT / "Containerfile"
UNITS = sorted((ROOT / "docs" / "systemd").glob("*.service"))
DEPLOYMENT = ROOT / "docs" / "deployment.md"
#: Debian's python3 per suite: the base image must be new enough for requires-python.
DEBIAN_PYTHON = {"bookworm": "3.11", "trixie": "3.13"}
#: Not settings of the server: the CLI's as a client (--url, --token), the placeholder of
#: "CONCORDIA_NAME=value" lines, and the test runner's (scripts/run-tests).
NOT_SETTINGS = {"CONCORDIA_URL", "CONCORDIA_TOKEN", "CONCORDIA_NAME", "CONCORDIA_TEST_WORKERS"}
#: Options that stop bubblewrap (user namespaces, a fresh /proc) or mmdebstrap's setuid
#: newuidmap from working in the service; see the unit's comments.
BREAKS_JOBS_OR_BUILDS = {
    "RestrictNamespaces",
    "PrivateUsers",
    "ProtectKernelTunables",
    "ProtectKernelLogs",
    "ProtectProc",
    "ProcSubset",
    "NoNewPrivileges",
    "DynamicUser",
    "SystemCallFilter",
    "CapabilityBoundingSet",
}


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def _makefile_packages() -> list[str]:
    match = re.search(r"^SYSTEM_PACKAGES\s*:=\s*(.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert match
    return match.group(1).split()


def _unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file's sections and their (repeatable) keys."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, f"{path.name}:{number}: {raw!r}"
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_containerfile_installs_the_makefile_system_packages() -> None:
    installed = " ".join(args for op, args in _instructions(CONTAINERFILE) if op == "RUN")
    words = set(installed.split())
    assert "apt-get" in words
    missing = [p for p in _makefile_packages() if p not in words]
    assert not missing, f"the Containerfile does not install {missing}"


def test_containerfile_base_has_the_project_python() -> None:
    [base] = [args for op, args in _instructions(CONTAINERFILE) if op == "FROM"]
    name, _, tag = base.partition(":")
    assert name == "debian", "a Debian base, named without a registry host"
    suite = tag.removesuffix("-slim")
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert DEBIAN_PYTHON[suite] in SpecifierSet(requires)


def test_containerfile_copies_files_that_exist_and_are_not_ignored() -> None:
    ignore = (ROOT / ".containerignore").read_text().splitlines()
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    assert "*" in ignore, ".containerignore lists what goes in (everything else stays out)"
    copies = [args.split()[:-1] for op, args in _instructions(CONTAINERFILE) if op == "COPY"]
    assert copies
    for sources in copies:
        for source in sources:
            assert not source.startswith("--"), "no COPY --from or --chown: plain sources"
            assert (ROOT / source).exists(), source
            assert source in allowed, f"{source} is left out by .containerignore"


def test_containerfile_runs_concordia_serve_as_a_user_on_all_interfaces() -> None:
    instructions = _instructions(CONTAINERFILE)
    by_op: dict[str, list[str]] = {}
    for op, args in instructions:
        by_op.setdefault(op, []).append(args)
    env = dict(re.findall(r"(CONCORDIA_\w+)=(\S+)", " ".join(by_op["ENV"])))
    assert env["CONCORDIA_HOST"] == "0.0.0.0"  # noqa: S104 (the container's own interfaces)
    assert by_op["EXPOSE"] == [env["CONCORDIA_PORT"]]
    assert set(env) <= {f"CONCORDIA_{name.upper()}" for name in Settings.model_fields}
    assert by_op["USER"] == ["concordia"]
    assert by_op["VOLUME"] == [f'["{env["CONCORDIA_DATA_DIR"]}"]']
    assert "/healthz" in by_op["HEALTHCHECK"][0]
    assert by_op["CMD"][-1] == '["concordia", "serve"]'


def _settings_variables(text: str) -> set[str]:
    """The CONCORDIA_ names in a text, but for families such as CONCORDIA_OIDC_* and the
    variables of a worker node (CONCORDIA_NODE_*, read by the job wrapper)."""
    return set(re.findall(r"\bCONCORDIA_(?!NODE_)[A-Z0-9_]*[A-Z0-9]\b(?!_?\*)", text))


@pytest.mark.parametrize(
    "path",
    [DEPLOYMENT, CONTAINERFILE, ROOT / "README.md", *UNITS],
    ids=lambda p: p.relative_to(ROOT).as_posix(),
)
def test_every_setting_named_exists(path: Path) -> None:
    known = {f"CONCORDIA_{name.upper()}" for name in Settings.model_fields} | NOT_SETTINGS
    unknown = _settings_variables(path.read_text()) - known
    assert not unknown, f"{path.name} names settings that do not exist: {sorted(unknown)}"


def test_the_deployment_settings_file_is_valid(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every TOML example of docs/deployment.md loads as Concordia's settings file."""
    blocks = re.findall(r"```toml\n(.*?)```", DEPLOYMENT.read_text(), re.S)
    assert blocks
    for block in blocks:
        data = tomllib.loads(block)
        assert set(data) <= set(Settings.model_fields)
        config = tmp_path / "concordia.toml"
        config.write_text(block)
        monkeypatch.setenv("CONCORDIA_CONFIG_FILE", str(config))
        monkeypatch.setenv("CONCORDIA_DATA_DIR", str(tmp_path / "var"))
        Settings()


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_unit_is_hardened_without_breaking_jobs(unit: Path) -> None:
    sections = _unit(unit)
    assert set(sections) == {"Unit", "Service", "Install"}
    service = sections["Service"]
    assert service["User"] != ["root"] and "concordia" in service["User"]
    assert service["ProtectSystem"] == ["strict"]
    [state] = service["StateDirectory"]
    data_dir = f"/var/lib/{state}"
    assert data_dir in service["ReadWritePaths"]
    assert f"CONCORDIA_DATA_DIR={data_dir}" in service["Environment"]
    assert not BREAKS_JOBS_OR_BUILDS & set(service), "see the unit's comments"
    assert service["Delegate"] == ["yes"]  # cgroup v2 bounds of local jobs
    variables = _settings_variables(" ".join(service["Environment"]))
    assert variables <= {f"CONCORDIA_{name.upper()}" for name in Settings.model_fields}


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_unit_verifies(unit: Path, tmp_path: Path) -> None:
    """systemd-analyze verify, quiet: no unknown key, bad value or missing executable. The
    unit's commands are installed under /opt on a server; here, this venv's stand in."""
    here = str(Path(sys.executable).parent / "concordia")
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace("/opt/concordia/venv/bin/concordia", here))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    problems = [line for line in result.stderr.splitlines() if unit.name in line]
    assert result.returncode == 0 and not problems, result.stderr


#: Settings whose value is a secret: the guide keeps them out of the group-readable TOML.
SECRET_SETTINGS = {
    name
    for name, field in Settings.model_fields.items()
    if "SecretStr" in str(field.annotation) or name == "database_url"  # its password
}


def test_the_guide_keeps_secrets_from_the_service_group() -> None:
    """The TOML is readable by the service's group, so by its jobs and builds: it holds no
    secret. Secrets are root-only files (a 0700 directory, written under umask 077) that
    every unit hands over with LoadCredential=, named as Concordia reads them."""
    text = DEPLOYMENT.read_text()
    for block in re.findall(r"```toml\n(.*?)```", text, re.S):
        assert not set(tomllib.loads(block)) & SECRET_SETTINGS, block
    loaded = {value for unit in UNITS for value in _unit(unit)["Service"]["LoadCredential"]}
    [credential] = loaded  # the same in every unit
    prefix, directory = credential.split(":", 1)
    assert prefix == "CONCORDIA"  # a file NAME becomes CONCORDIA_NAME, a setting's variable
    assert f"install -d -m 0700 -o root -g root {directory}\n" in text
    [written] = [b for b in re.findall(r"```sh\n(.*?)```", text, re.S) if f"cd {directory}" in b]
    assert f"sh -c 'umask 077; cd {directory}\n" in written
    for name in SECRET_SETTINGS - {"metrics_token"}:  # optional, named in the text
        assert f"> {name.upper()}" in written, name
    assert "`METRICS_TOKEN`" in text
    for unit in UNITS:
        assert "concordia.toml" in " ".join(_unit(unit)["Service"]["Environment"])
