"""A grid job's data into the data lake: the wrapper on the node writes it to the real WebDAV
RSE of tests/rucio.py, Concordia registers it in the real Rucio server."""

from __future__ import annotations

import base64
import json
import os
import shutil
import ssl
import subprocess
import sys
import uuid
import zlib
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pytest

from concordia.backends.wrapper.concordia_job_base import WRAPPER_FILES
from concordia.backends.wrapper.concordia_job_lake import DATALAKE_MANIFEST, lake_path
from concordia.datalake.rucio import DatalakeError, NotFound, Rucio
from tests.rucio import RucioServer

WRAPPER = resources.files("concordia.backends") / "wrapper"
SCOPE = "user.jane"
NODE_PATH = "/usr/bin:/bin"
MB = 1024 * 1024


@pytest.fixture
async def rucio(rucio_server: RucioServer) -> AsyncIterator[Rucio]:
    """Concordia's client as its service account; jane's scope exists."""
    client = Rucio(
        rucio_server.url,
        rucio_server.service,
        password=rucio_server.password(rucio_server.service),
        verify=rucio_server.ca,
    )
    await client.ensure_scope(SCOPE, "jane")
    yield client
    await client.aclose()


def lake(server: RucioServer, names: str, **changes: object) -> dict[str, Any]:
    """The wrapper's datalake settings for the test RSE, verified with its own CA."""
    settings = {
        "url": server.webdav_url,
        "scope": SCOPE,
        "names": names,
        "data": ["*.zst", "*.readonly"],
        "outputs": ["*.root", "*.txt"],
        "sandbox_max_bytes": MB,
        "ca": Path(server.ca).read_text(),
    }
    return {**settings, **changes}


def job_dir(root: Path, datalake: dict[str, Any]) -> Path:
    """A job's directory as DIRAC makes it: the wrapper, its settings (names in the job's
    own argument, as the JDL gives it)."""
    work = root / "job"
    work.mkdir(parents=True)
    for name in WRAPPER_FILES:
        (work / name).write_bytes((WRAPPER / name).read_bytes())
    shared = {k: v for k, v in datalake.items() if k != "names"}
    config = {"image": None, "network": False, "datalake": shared}
    (work / "concordia-job.json").write_text(json.dumps(config))
    return work


def run_job(
    work: Path, script: str, names: str, **arguments: str
) -> subprocess.CompletedProcess[str]:
    """The job as DIRAC starts it on a node: plain python3, the job's directory; its
    ``arguments`` besides the command and names (e.g. datalake_token_url)."""
    job = {"argv": ["sh", "-c", script], "datalake_names": names, **arguments}
    arg = base64.urlsafe_b64encode(json.dumps(job).encode()).decode().rstrip("=")
    return subprocess.run(
        [sys.executable, "-I", "-S", str(work / "concordia_job.py"), arg], cwd=work,
        env={"PATH": NODE_PATH}, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def manifest(work: Path) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads((work / DATALAKE_MANIFEST).read_text())
    return entries


def random_file(path: Path, size: int) -> str:
    """A file of random bytes; its adler32 as Rucio writes it."""
    data = os.urandom(size)
    path.write_bytes(data)
    return f"{zlib.adler32(data):08x}"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def test_a_grid_job_stores_its_data_and_concordia_registers_it(
    rucio: Rucio, rucio_server: RucioServer, tmp_path: Path
) -> None:
    names = unique("corsika") + ".000001."
    work = job_dir(tmp_path, lake(rucio_server, names))
    shower = random_file(tmp_path / "shower.bin", 50 * MB)
    histo = random_file(tmp_path / "histo.bin", 2 * MB)
    script = (
        "cp ../shower.bin DAT000001.corsika.zst && cp ../histo.bin histo.root"
        " && echo fine > summary.txt"
    )
    done = run_job(work, script, names)
    assert done.returncode == 0, done.stderr

    # The data file, and the output too big for the sandbox, are on the RSE and gone from
    # the job's directory; the small output stays for the sandbox.
    entries = manifest(work)
    assert [(e["file"], e["name"], e["bytes"], e["adler32"]) for e in entries] == [
        ("DAT000001.corsika.zst", names + "DAT000001.corsika.zst", 50 * MB, shower),
        ("histo.root", names + "histo.root", 2 * MB, histo),
    ]
    assert not (work / "DAT000001.corsika.zst").exists() and not (work / "histo.root").exists()
    assert (work / "summary.txt").read_text() == "fine\n"
    assert "Traceback" not in done.stderr

    trusted = ssl.create_default_context(cafile=rucio_server.ca)
    async with httpx.AsyncClient(verify=trusted) as http:
        for entry, source in zip(entries, ("shower.bin", "histo.bin"), strict=True):
            # Where the wrapper wrote is where Rucio says the file is.
            assert entry["url"] == await rucio.pfn(SCOPE, entry["name"], rucio_server.webdav_rse)
            stored = await http.get(entry["url"])
            assert stored.content == (tmp_path / source).read_bytes()

    dataset = unique("corsika")
    await rucio.add_dataset(SCOPE, dataset, {})
    for entry in entries:
        registered = await rucio.register(
            SCOPE,
            entry["name"],
            rucio_server.webdav_rse,
            bytes=entry["bytes"],
            adler32=entry["adler32"],
            dataset=(SCOPE, dataset),
            meta={"run_number": 1},
        )
        assert (registered.bytes, registered.adler32, registered.state) == (
            entry["bytes"],
            entry["adler32"],
            "A",
        )
        # Registered again (Concordia restarted mid-way): the same file, nothing new.
        again = await rucio.register(
            SCOPE,
            entry["name"],
            rucio_server.webdav_rse,
            bytes=entry["bytes"],
            adler32=entry["adler32"],
            dataset=(SCOPE, dataset),
        )
        assert again == registered
    listed = await rucio.files(SCOPE, dataset)
    assert sorted((f.name, f.adler32, f.state) for f in listed) == [
        (e["name"], e["adler32"], "A") for e in entries
    ]
    data = b"".join([c async for c in rucio.open(SCOPE, entries[0]["name"])])
    assert data == (tmp_path / "shower.bin").read_bytes()


async def test_a_refused_upload_fails_the_job_with_the_reason(
    rucio: Rucio, rucio_server: RucioServer, tmp_path: Path
) -> None:
    # The storage takes the first file and refuses the second (nginx: names *.readonly).
    names = unique("refused") + "."
    work = job_dir(tmp_path, lake(rucio_server, names))
    first = random_file(tmp_path / "a.bin", 3 * MB)
    random_file(tmp_path / "b.bin", 3 * MB)
    done = run_job(work, "cp ../a.bin a.zst && cp ../b.bin b.readonly", names)
    assert done.returncode != 0
    assert done.stderr.splitlines()[-1] == (
        "[concordia] data lake: upload of b.readonly refused: HTTP 403 Forbidden"
    )
    assert "Traceback" not in done.stderr
    # What was stored before is listed (Concordia registers it); the refused file stays.
    assert [(e["file"], e["adler32"]) for e in manifest(work)] == [("a.zst", first)]
    assert not (work / "a.zst").exists() and (work / "b.readonly").stat().st_size == 3 * MB

    # A storage that refuses every write: the job fails, nothing listed.
    readonly = rucio_server.webdav_url.replace("/rucio/", "/readonly/")
    other = job_dir(tmp_path / "other", lake(rucio_server, names, url=readonly))
    done = run_job(other, "cp ../../a.bin c.zst", names)
    assert done.returncode != 0
    assert "[concordia] data lake: upload of c.zst refused: HTTP 403 Forbidden" in done.stderr
    assert manifest(other) == [] and (other / "c.zst").exists()


async def test_a_job_that_fails_stores_nothing_and_one_without_a_datalake_is_unchanged(
    rucio_server: RucioServer, tmp_path: Path
) -> None:
    names = unique("failed") + "."
    work = job_dir(tmp_path, lake(rucio_server, names))
    done = run_job(work, "echo x > d.zst; exit 3", names)
    assert done.returncode == 3
    assert (work / "d.zst").exists() and not (work / DATALAKE_MANIFEST).exists()

    plain = tmp_path / "plain"
    plain.mkdir()
    for name in WRAPPER_FILES:
        shutil.copy(str(WRAPPER / name), plain / name)
    (plain / "concordia-job.json").write_text(json.dumps({"image": None, "network": False}))
    done = run_job(plain, "head -c 2000000 /dev/zero > big.root", names)
    assert done.returncode == 0 and (plain / "big.root").stat().st_size == 2000000
    assert not (plain / DATALAKE_MANIFEST).exists()


@pytest.mark.parametrize("name", ["DAT000001.corsika.zst", "a b+c%.dat", "ds.000042.histo.root"])
async def test_the_wrapper_writes_where_rucio_says_the_file_is(
    rucio: Rucio, rucio_server: RucioServer, name: str
) -> None:
    from concordia.backends.wrapper.concordia_job_lake import lake_url

    settings = lake(rucio_server, "")
    assert lake_url(settings, name) == await rucio.pfn(SCOPE, name, rucio_server.webdav_rse)
    assert lake_path(SCOPE, name).startswith("user/jane/")


async def test_registering_a_missing_or_different_object_is_refused(
    rucio: Rucio, rucio_server: RucioServer, tmp_path: Path
) -> None:
    rse = rucio_server.webdav_rse
    missing = unique("missing.dat")
    with pytest.raises(DatalakeError, match="is not on"):
        await rucio.register(SCOPE, missing, rse, bytes=10, adler32="0001000b")

    names = unique("short") + "."
    work = job_dir(tmp_path, lake(rucio_server, names))
    assert run_job(work, "head -c 1000 /dev/urandom > e.zst", names).returncode == 0
    [entry] = manifest(work)
    with pytest.raises(DatalakeError, match="is 1000 bytes, not the 1001"):
        await rucio.register(SCOPE, entry["name"], rse, bytes=1001, adler32=entry["adler32"])
    for name in (missing, entry["name"]):  # nothing registered in Rucio
        with pytest.raises(NotFound):
            await rucio.file(SCOPE, name)
