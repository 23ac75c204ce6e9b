"""What a grid job's wrapper is told about its image: published first where worker nodes get
it (the unpacked tree, an OCI registry, then a link to Concordia signed for the job), read
back from DiracX."""

from __future__ import annotations

import logging
import re
import subprocess
import time
from typing import Any
from urllib.parse import urlencode

from concordia.backends.base import BackendError, JobImage
from concordia.images.publication import UnpackedTree, link_signature
from concordia.images.registry import Registry, RegistryError, repository_name
from concordia.settings import GridSettings

log = logging.getLogger(__name__)

#: The application status the job wrapper sets when its command ends (its EXITED).
_EXITED = re.compile(r"Application exited with code (\d+)")


class ImageNotPublished(BackendError):
    """A target the jobs rely on did not take the image: they are not handed over."""


def link_path(image_id: str) -> str:
    """The route of a grid image link, below the server's public URL."""
    return f"/api/v1/grid/images/{image_id}/image.sqsh"


def exit_code_of(application_status: str) -> int | None:
    """The exit code of the job's command, where its wrapper told it (None: it did not run)."""
    found = _EXITED.fullmatch(application_status)
    return int(found[1]) if found else None


class GridImages:
    """Publication before submission, in the order of ``grid_image_targets``; ``keys`` sign
    the links (the first; derived from the server's keys, never written anywhere), which lead
    to the server at ``public_url``."""

    def __init__(self, settings: GridSettings, public_url: str, keys: list[bytes]) -> None:
        self.settings = settings
        self.public_url = public_url
        self.keys = keys
        targets = settings.grid_image_targets
        self.tree: UnpackedTree | None = None
        if "unpacked" in targets and settings.grid_unpacked_dir is not None:
            node_root = settings.grid_unpacked_node_path or str(settings.grid_unpacked_dir)
            self.tree = UnpackedTree(settings.grid_unpacked_dir, node_root)
        self.links = "https" in targets
        self.registry: Registry | None = None
        if "registry" in targets and settings.grid_registry_url:
            self.registry = Registry(
                settings.grid_registry_url,
                username=settings.grid_registry_username,
                password=settings.grid_registry_password.get_secret_value(),
                token=settings.grid_registry_token.get_secret_value(),
            )
        #: A registry that asks for credentials is taken as private: restricted images go
        #: there too (whoever pulls them needs an account the operator gives).
        self.registry_private = bool(
            settings.grid_registry_username or settings.grid_registry_token.get_secret_value()
        )

    def close(self) -> None:
        if self.registry is not None:
            self.registry.close()

    def wrapper_settings(self) -> dict[str, Any]:
        """What every job's wrapper reads besides its image (concordia-job.json)."""
        return {
            "diracx_url": self.settings.diracx_url,
            "apptainer_dirs": self.settings.grid_apptainer_dirs,
            "cache_dir": self.settings.grid_image_cache,
        }

    def publish(self, image: JobImage, vo: str) -> dict[str, Any]:
        """The image where nodes get it (blocking: a first publication copies its root
        filesystem or uploads it); what the wrapper is told of it. ImageNotPublished where
        the registry does not take it: its jobs would be sent a reference that is not there."""
        unpacked = None
        if self.tree is not None and image.redistributable:
            manifest = {
                "id": image.id,
                "application": image.application,
                "env": image.env,
                "workdir": image.workdir,
                "squashfs_sha256": image.squashfs_sha256,
            }
            try:
                unpacked = self.tree.publish(
                    image.id, image.rootfs, image.application or "image", manifest
                )
            except (OSError, subprocess.SubprocessError) as exc:
                # The signed link still serves it: the job runs, a little slower to start.
                log.warning("image %s not published in the unpacked tree: %s", image.id, exc)
        return {
            "id": image.id,
            "sha256": image.squashfs_sha256,
            "workdir": image.workdir,
            "env": image.env,
            "unpacked": unpacked,
            "registry": self._push(image, vo),
        }

    def _push(self, image: JobImage, vo: str) -> dict[str, str] | None:
        """The image's references in the registry (a tag already there is not pushed again);
        None where there is no registry or the image may not go to it."""
        if self.registry is None or not (image.redistributable or self.registry_private):
            return None
        pushed: dict[str, str] = {}
        try:
            application = image.application or "image"  # as the unpacked tree names it
            name = repository_name(self.settings.grid_registry_prefix, vo, application)
            if image.oci_archive is not None:
                oci = self.registry.push_oci_archive(name, image.id, image.oci_archive)
                pushed["oci"] = oci.reference
            if image.squashfs is not None and image.squashfs_sha256:
                sqsh = self.registry.push_squashfs(
                    f"{name}/squashfs", image.id, image.squashfs, image.squashfs_sha256
                )
                pushed["squashfs"] = sqsh.reference
        except (RegistryError, OSError) as exc:
            raise ImageNotPublished(f"image {image.id[:12]} not pushed: {exc}") from None
        return pushed or None

    def link(self, image: JobImage, job: str) -> str | None:
        """The job's own link to the image's SquashFS; None where there is none to give."""
        if not (self.links and self.keys and image.squashfs_sha256):
            return None
        expires = int(time.time() + self.settings.grid_image_link_hours * 3600)
        query = urlencode(
            {
                "job": job,
                "expires": expires,
                "sig": link_signature(self.keys[0], image.id, job, expires),
            }
        )
        return f"{self.public_url.rstrip('/')}{link_path(image.id)}?{query}"
