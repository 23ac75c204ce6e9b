"""Grid images pushed to a real OCI registry (Debian's docker-registry): the OCI image and the
SquashFS artifact as they are, read back by skopeo; once; with credentials where asked;
and a clear refusal where the registry does not take them."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from concordia.backends.base import JobImage
from concordia.backends.grid_images import GridImages, ImageNotPublished
from concordia.images.registry import SQUASHFS_TYPE
from concordia.images.store import ImageStore
from concordia.logic.job_specs import job_image as _job_image
from tests.conftest import free_port, make_settings
from tests.registry import PASSWORD, USER, LocalRegistry


@pytest.fixture
def image(image_seed: Path) -> JobImage:
    """The seed's hello image, as a grid job gets it (public inputs only)."""
    store = ImageStore(image_seed)
    [image_id] = [p.name for p in image_seed.iterdir() if (p / "image.json").is_file()]
    found = _job_image(store.get(image_id))
    assert found is not None and found.oci_archive is not None and found.squashfs is not None
    assert found.redistributable
    return found


def grid_images(tmp_path: Path, url: str, **settings: object) -> GridImages:
    grid = make_settings(tmp_path / "var", grid_registry_url=url, **settings)
    return GridImages(grid, grid.public_url, [])


def inspect(reference: str, *options: str) -> dict[str, Any]:
    """What skopeo, on its own, reads of a reference in the registry."""
    done = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", *options, f"docker://{reference}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def archive_manifest(archive: Path) -> tuple[str, dict[str, Any]]:
    """The digest and content of the manifest the image's OCI archive tags latest."""
    with tarfile.open(archive) as tar:
        index = json.load(tar.extractfile("./index.json"))  # type: ignore[arg-type]
        [entry] = index["manifests"]
        hexdigest = entry["digest"].split(":")[1]
        manifest = json.load(tar.extractfile(f"./blobs/sha256/{hexdigest}"))  # type: ignore[arg-type]
    return entry["digest"], manifest


def test_the_image_and_its_squashfs_are_pushed_once_as_they_are(
    tmp_path: Path, registry: LocalRegistry, image: JobImage
) -> None:
    images = grid_images(tmp_path, registry.url)
    pushed = images.publish(image, "cta")["registry"]
    assert pushed == {
        "oci": f"{registry.host}/concordia/cta/hello:{image.id}",
        "squashfs": f"{registry.host}/concordia/cta/hello/squashfs:{image.id}",
    }

    # The OCI image: the archive's manifest, byte for byte (same digest), and its layers.
    assert image.oci_archive is not None
    digest, manifest = archive_manifest(image.oci_archive)
    read = inspect(pushed["oci"])
    assert read["Digest"] == digest
    assert read["Layers"] == [layer["digest"] for layer in manifest["layers"]]
    assert inspect(pushed["oci"], "--raw") == manifest
    # The SquashFS: one layer whose digest is the image's sha256.
    artifact = inspect(pushed["squashfs"], "--raw")
    assert artifact["artifactType"] == SQUASHFS_TYPE
    [layer] = artifact["layers"]
    assert layer["digest"] == f"sha256:{image.squashfs_sha256}"
    assert image.squashfs is not None and layer["size"] == image.squashfs.stat().st_size

    # Again (another submission, another server process): nothing is uploaded again.
    uploads = registry.requests("PUT", "/blobs/uploads/")
    manifests = registry.requests("PUT", "/manifests/")
    assert uploads == len(manifest["layers"]) + 3 and manifests == 2  # + 2 configs, the sqsh
    again = grid_images(tmp_path, registry.url).publish(image, "cta")["registry"]
    assert again == pushed
    assert registry.requests("PUT", "/blobs/uploads/") == uploads
    assert registry.requests("POST", "/blobs/uploads/") == uploads
    assert registry.requests("PUT", "/manifests/") == manifests


def test_a_registry_with_credentials_takes_them_and_restricted_images_too(
    tmp_path: Path, auth_registry: LocalRegistry, registry: LocalRegistry, image: JobImage
) -> None:
    restricted = image.model_copy(update={"redistributable": False})
    # An open registry is public: an image of operator-provided sources never goes there.
    assert grid_images(tmp_path, registry.url).publish(restricted, "cta")["registry"] is None
    assert registry.requests("PUT", "/manifests/") == 0

    with pytest.raises(ImageNotPublished, match=rf"registry {auth_registry.host} refused .*401"):
        grid_images(tmp_path, auth_registry.url).publish(image, "cta")
    creds = {"grid_registry_username": USER, "grid_registry_password": PASSWORD}
    pushed = grid_images(tmp_path, auth_registry.url, **creds).publish(restricted, "cta")
    assert pushed["registry"] is not None
    reference = pushed["registry"]["oci"]
    refused = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", f"docker://{reference}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode != 0 and "authentication required" in refused.stderr
    assert inspect(reference, f"--creds={USER}:{PASSWORD}")["Name"] == reference.rsplit(":", 1)[0]


def test_a_registry_that_is_down_or_a_name_it_cannot_take_is_a_clear_refusal(
    tmp_path: Path, image: JobImage, registry: LocalRegistry
) -> None:
    down = f"127.0.0.1:{free_port()}"
    with pytest.raises(ImageNotPublished) as refused:
        grid_images(tmp_path, f"http://{down}").publish(image, "cta")
    assert str(refused.value) == f"image {image.id[:12]} not pushed: registry {down} did not " \
        "answer: ConnectError"  # fmt: skip
    odd = image.model_copy(update={"application": "hello world"})
    with pytest.raises(ImageNotPublished, match="not a repository name a registry takes"):
        grid_images(tmp_path, registry.url).publish(odd, "cta")
    assert registry.requests("PUT", "/manifests/") == 0
