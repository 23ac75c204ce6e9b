"""What a grid job of a data-lake submission is told (JobSpec.datalake), and which of its
wrapper's manifest entries Concordia accepts to register."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from concordia.core.application import ApplicationDef, DatalakeDef
from concordia.datalake.errors import DatalakeError
from concordia.logic.datalake_choice import DatalakeChoice, file_name, name_prefix
from concordia.logic.datalake_grid import ca_text, grid_settings, read_manifest
from concordia.settings import Settings

UUID = "0123abcd-0000-4000-8000-000000000000"
APP = ApplicationDef(
    name="sim", title="Sim", command="true", outputs=["*.dat", "*.txt"],
    datalake=DatalakeDef(default=True, data=["*.dat"]),
)  # fmt: skip
CHOICE = DatalakeChoice(scope="user.jdoe", rse="WEBDAV", dataset="sim.7")


def settings(tmp_path: Path, **values: object) -> Settings:
    lake: dict[str, object] = {"datalake_url": "https://rucio.example.org", "datalake_rse": "A"}
    return Settings(data_dir=tmp_path, **(lake | values))  # type: ignore[arg-type]


def test_a_grid_job_is_told_where_and_under_which_names_its_data_go(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    s = settings(tmp_path, datalake_verify=str(ca), datalake_sandbox_max_bytes=5 << 20)
    lake = grid_settings(
        s, "https://dav.example.org:8443/rucio", CHOICE, APP, submission_id=7, index=3,
        job_uuid=UUID, attempt=1, ca=ca_text(s),
    )  # fmt: skip
    assert lake == {
        "url": "https://dav.example.org:8443/rucio",
        "scope": "user.jdoe",
        "names": "sim.7.3r1.0123abcd.",
        "data": ["*.dat"],
        "sandbox_max_bytes": 5 << 20,
        "ca": ca.read_text(),
    }
    # The wrapper names a file <names><file>: as a local job's file of the same run is named.
    assert lake["names"] + "shower.dat" == file_name("sim", 7, 3, UUID, "shower.dat", 1)
    # The node's own CAs where Concordia trusts the system's.
    assert ca_text(settings(tmp_path)) is None


def entry(name: str, size: int = 10, adler32: str = "0a0b0c0d") -> dict[str, object]:
    return {"name": name, "file": "x", "bytes": size, "adler32": adler32, "url": "https://x/y"}


def test_the_jobs_own_manifest_entries_are_read() -> None:
    prefix = name_prefix("sim", 7, 3, UUID)
    files = read_manifest(json.dumps([entry(prefix + "a.dat", 5, "0A0B0C0D")]), prefix)
    assert [(f.name, f.bytes, f.adler32) for f in files] == [(prefix + "a.dat", 5, "0a0b0c0d")]
    assert read_manifest("[]", prefix) == []


@pytest.mark.parametrize(
    ("entries", "why"),
    [
        # Another job's file (a payload that wrote a manifest of its own): never registered.
        ([entry(name_prefix("sim", 7, 4, UUID) + "a.dat")], "not a file of this job"),
        ([entry("user.jane.secret")], "not a file of this job"),
        ([entry(name_prefix("sim", 7, 3, UUID) + "a b")], "not a file of this job"),
        ([entry(name_prefix("sim", 7, 3, UUID) + "a.dat", size=-1)], "no size"),
        ([entry(name_prefix("sim", 7, 3, UUID) + "a.dat", adler32="zz")], "no adler32"),
        ({"name": "x"}, "not a list"),
    ],
)
def test_a_manifest_naming_what_is_not_the_jobs_is_refused(entries: object, why: str) -> None:
    with pytest.raises(DatalakeError, match=why):
        read_manifest(json.dumps(entries), name_prefix("sim", 7, 3, UUID))
    with pytest.raises(DatalakeError, match="not JSON"):
        read_manifest("[{", name_prefix("sim", 7, 3, UUID))
