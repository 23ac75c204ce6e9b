"""A grid job through the real DiracX and the test site, its data uploaded with a token its
wrapper fetched from Concordia with the link its JDL carries (never the token itself), to an
RSE that lets in WLCG token holders alone: Concordia checks and reads what the job stored
there with read tokens of its own."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import uvicorn

from concordia.core.jdl import parse_jdl
from tests.conftest import Running, free_port, running_app
from tests.diracx.fixtures import DiracX
from tests.diracx.site import Site
from tests.integration.backends.test_diracx_backend import (
    LAKE_APP,
    LAKE_SH,
    grid_settings,
    handed_over,
    wait_jobs,
)
from tests.rucio import RucioServer
from tests.wlcg_verifier import rse_trust, running_verifier

#: A JWT (a JSON header, base64url, then payload and signature): none may show in the JDL
#: or the logs.
JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+")


@asynccontextmanager
async def served(running: Running, port: int) -> AsyncIterator[None]:
    """The running app on a loopback port too: the site's jobs reach Concordia over HTTP,
    as worker nodes reach its public URL."""
    app = running.client._transport.app  # type: ignore[attr-defined]
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="off", log_config=None, access_log=False
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), task
        await asyncio.sleep(0.05)
    try:
        yield
    finally:
        server.should_exit = True
        await task


async def test_a_grid_job_uploads_with_a_token_fetched_by_its_jdl_link(
    tmp_path: Path,
    diracx: DiracX,
    site: Site,
    rucio_server: RucioServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    (tmp_path / "apps").mkdir()
    (tmp_path / "apps" / "gridlake.yaml").write_text(LAKE_APP)
    (tmp_path / "apps" / "lake.sh").write_text(LAKE_SH)
    port = free_port()
    settings = grid_settings(
        tmp_path, diracx,
        public_url=f"http://127.0.0.1:{port}",
        datalake_url=rucio_server.url,
        datalake_account=rucio_server.service,
        datalake_password=rucio_server.password(rucio_server.service),
        datalake_verify=rucio_server.ca,
        datalake_rse=rucio_server.token_rse,
        datalake_upload_tokens=True,
    )  # fmt: skip
    trust = await rse_trust(rucio_server, settings.public_url, rucio_server.token_rse)
    async with running_app(settings) as grid, served(grid, port):
        made = await grid.client.post(
            "/api/v1/submissions", json={"application": "gridlake", "parameters": {"run": 7}}
        )
        assert made.status_code == 201, made.text
        [job_id] = made.json()["job_ids"]
        await handed_over(grid.client, [job_id])
        with site.running(), running_verifier(trust, rucio_server.verifier_port):
            [job] = await wait_jobs(grid.client, [job_id], "Done", "Failed", timeout=120)
            assert (job["status"], job["minor_status"]) == ("Done", "Execution Complete"), job
            [stored] = (await grid.client.get(f"/api/v1/jobs/{job_id}/datalake")).json()
            assert stored["bytes"] == 3000000 and stored["state"] == "A"
            read = await grid.client.get(f"/api/v1/jobs/{job_id}/datalake/{stored['name']}")
            assert read.status_code == 200 and len(read.content) == 3000000
        # The storage let in the wrapper's PUT and Concordia's own HEAD (its check before
        # registering) and GET, each with its token; it refused nothing.
        assert [why for _, why in trust.decisions] == ["allowed"] * 3, trust.decisions

    # The JDL Concordia shows carries the job's link, never a token.
    jdl = job["jdl"]
    argument = str(parse_jdl(jdl)["Arguments"]).split()[0]
    carried = json.loads(base64.urlsafe_b64decode(argument + "=" * (-len(argument) % 4)))
    link = carried["datalake_token_url"]
    assert link.startswith(f"http://127.0.0.1:{port}/api/v1/grid/jobs/{job['uuid']}/upload-token?")
    assert JWT.search(jdl) is None and JWT.search(json.dumps(carried)) is None
    # The wrapper fetched its token with it (the access log), and no token was logged.
    fetched = [r.getMessage() for r in caplog.records if "/upload-token?" in r.getMessage()]
    assert len(fetched) == 1 and '" 200 ' in fetched[0], fetched
    assert f"name={stored['name']}" in fetched[0]
    assert JWT.search(caplog.text) is None
