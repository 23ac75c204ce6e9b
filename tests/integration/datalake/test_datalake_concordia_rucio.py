"""Concordia's data-lake path against the real Rucio of the tests: a local job's data in
the user's scope under the submission's dataset, with its metadata, downloadable through
Concordia with the same adler32, on the POSIX and the WebDAV RSE."""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from concordia.datalake.rucio import Rucio
from tests.conftest import running_app
from tests.integration.datalake.test_datalake import FINAL, lake_settings, submit
from tests.integration.web.test_api import wait_status
from tests.rucio import RucioServer


@pytest.fixture
async def checker(rucio_server: RucioServer) -> AsyncIterator[Rucio]:
    """A client of the service account, to see what Concordia stored."""
    client = Rucio(
        rucio_server.url,
        rucio_server.service,
        password=rucio_server.password(rucio_server.service),
        verify=rucio_server.ca,
    )
    yield client
    await client.aclose()


@pytest.mark.parametrize("which", ["posix", "webdav"])
async def test_a_local_jobs_data_reach_rucio_with_their_metadata(
    tmp_path: Path, rucio_server: RucioServer, checker: Rucio, which: str
) -> None:
    user = rucio_server.users[0]
    rse = rucio_server.posix_rse if which == "posix" else rucio_server.webdav_rse
    settings = lake_settings(
        tmp_path,
        local_user=user,
        **rucio_server.settings(),
        datalake_rses=[rucio_server.posix_rse, rucio_server.webdav_rse],
    )
    async with running_app(settings) as app:
        answer = await submit(
            app.client, parameters={"jobs": 2, "first_run": 40, "kb": 512},
            datalake={"rse": rse, "dataset": f"t.{which}.{tmp_path.name[-20:]}"},
        )  # fmt: skip
        assert answer.status_code == 201, answer.text
        sub = answer.json()
        scope, dataset = f"user.{user}", sub["datalake"]["dataset"]
        jobs = [await wait_status(app.client, j, FINAL, timeout=120) for j in sub["job_ids"]]
        assert [j["status"] for j in jobs] == ["Done", "Done"], jobs

        in_rucio = {f.name: f for f in await checker.files(scope, dataset)}
        names = [
            f"lake.{sub['id']}.{j['index']}.{j['uuid'][:8]}.data-{40 + j['index']}.bin"
            for j in jobs
        ]
        assert sorted(in_rucio) == sorted(names)
        meta = await checker.metadata(scope, names[1])
        assert str(meta["run"]) == "41" and str(meta["job_id"]) == str(jobs[1]["id"])
        assert meta["application"] == "lake" and meta["site"] == "local"

        listed = (await app.client.get(f"/api/v1/jobs/{jobs[1]['id']}/datalake")).json()
        [file] = listed
        assert file["rse"] == rse and file["bytes"] == 512 * 1024
        assert file["adler32"] == in_rucio[file["name"]].adler32
        got = await app.client.get(f"/api/v1/jobs/{jobs[1]['id']}/datalake/{file['name']}")
        assert got.status_code == 200
        assert f"{zlib.adler32(got.content):08x}" == file["adler32"]
