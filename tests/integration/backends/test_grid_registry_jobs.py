"""Grid jobs with an OCI registry as a publication target: a real server pushes the image
before handing jobs to a real DiracX, once for all its submissions; a registry that does
not take it fails the jobs with the registry's name and answer, nothing sent to DiracX."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import LiveServer, free_port
from tests.diracx.site import Site
from tests.integration.backends.test_grid_images import finished, node, submit, wait
from tests.integration.backends.test_grid_images import live_server_env as grid_env
from tests.registry import LocalRegistry

__all__ = ["grid_env", "node"]  # fixtures of the grid image tests, used here as they are


@pytest.fixture
def registry_up() -> bool:
    """A test parametrized with False has a registry URL where nothing answers."""
    return True


@pytest.fixture
def live_server_env(
    grid_env: dict[str, str], registry: LocalRegistry, registry_up: bool
) -> dict[str, str]:
    """The grid image tests' server, with the test's registry."""
    url = registry.url if registry_up else f"http://127.0.0.1:{free_port()}"
    return {**grid_env, "CONCORDIA_GRID_REGISTRY_URL": url}


def test_jobs_wait_for_their_image_in_the_registry_and_it_is_pushed_once(
    live_server: LiveServer, node: Site, registry: LocalRegistry
) -> None:
    first = submit(live_server, jobs=2)
    second = submit(live_server, message="again")
    with node.running():
        done = finished(live_server, [j["id"] for j in first + second])
    assert [j["status"] for j in done] == ["Done"] * 3, done
    image_id = done[0]["image_id"]
    tags = httpx.get(f"{registry.url}/v2/concordia/cta/hello/tags/list").json()
    assert tags["tags"] == [image_id]
    # Two submissions, one push: the image and its SquashFS, one manifest each.
    assert registry.requests("PUT", "/manifests/") == 2


@pytest.mark.parametrize("registry_up", [False])
def test_a_registry_that_does_not_answer_fails_the_jobs_saying_so(
    live_server: LiveServer, registry_up: bool
) -> None:
    made = httpx.post(
        f"{live_server.url}/api/v1/submissions",
        headers={"Authorization": f"Bearer {live_server.token}"},
        json={"application": "hello", "backend": "diracx"},
    )
    assert made.status_code == 201, made.text
    with httpx.Client(
        base_url=live_server.url, headers={"Authorization": f"Bearer {live_server.token}"}
    ) as client:
        [job] = wait(client, made.json()["job_ids"], lambda j: j["status"] == "Failed")
    assert job["backend_ref"] is None
    assert job["minor_status"].startswith("Refused by diracx: image ")
    assert "not pushed: registry 127.0.0.1:" in job["minor_status"]
    assert job["minor_status"].endswith("did not answer: ConnectError")
    assert "Traceback" not in live_server.output()
