"""Images pushed to an OCI registry over the distribution API: the OCI image (registries,
DUCC, Harbor, Apptainer's docker://) and the SquashFS as an artifact (an ORAS client)."""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

from concordia.images.layers import TAG

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
#: What the SquashFS artifact is (its artifactType and its one layer): not a SIF, so
#: Apptainer's oras:// refuses it; an ORAS client fetches the file and Apptainer runs it.
SQUASHFS_TYPE = "application/vnd.concordia.image.squashfs.v1"
#: OCI 1.1's empty config of an artifact: the two bytes "{}".
EMPTY_CONFIG = {
    "mediaType": "application/vnd.oci.empty.v1+json",
    "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
    "size": 2,
}
#: A path component of a repository name (the distribution spec's grammar).
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*")
#: Repository names longer than this are refused by registries (the distribution spec).
NAME_LENGTH = 255
_CHUNK = 1 << 20


class RegistryError(Exception):
    """A push did not happen; the message names the registry and its answer."""


@dataclass(frozen=True)
class Pushed:
    """Where an image is now, and whether this push sent anything."""

    reference: str
    uploaded: bool


def repository_name(*parts: str) -> str:
    """``parts`` joined as a repository name, lowercased; RegistryError where a part does
    not fit the distribution spec's grammar (a registry would refuse the push)."""
    components = [c for part in parts for c in part.lower().strip("/").split("/") if part]
    bad = [c for c in components if not _COMPONENT.fullmatch(c)]
    if bad or not components:
        raise RegistryError(
            f"{'/'.join(parts)!r} is not a repository name a registry takes: each part must be "
            "lowercase letters and digits, separated by '.', '_', '__' or '-'"
        )
    name = "/".join(components)
    if len(name) > NAME_LENGTH:
        raise RegistryError(f"repository name {name!r} is over {NAME_LENGTH} characters")
    return name


class Registry:
    """One registry at ``url`` (http(s)://host[:port]), with basic auth or a bearer token."""

    def __init__(
        self, url: str, username: str = "", password: str = "", token: str = "",
        timeout: float = 600,
    ) -> None:  # fmt: skip
        self.url = url.rstrip("/")
        self.host = self.url.split("://", 1)[-1]
        auth = httpx.BasicAuth(username, password) if username else None
        headers = {"Authorization": f"Bearer {token}"} if token and not username else {}
        self.http = httpx.Client(base_url=self.url, auth=auth, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def push_oci_archive(self, repository: str, tag: str, archive: Path) -> Pushed:
        """The image of an OCI layout tar (its ``latest``), blobs and manifest as they are:
        the registry's digest is the layout's."""
        if self._has_manifest(repository, tag):
            return Pushed(f"{self.host}/{repository}:{tag}", uploaded=False)
        with tarfile.open(archive) as tar:
            manifest_bytes, media_type = _layout_manifest(tar)
            manifest = json.loads(manifest_bytes)
            for blob in [manifest["config"], *manifest["layers"]]:
                digest, size = str(blob["digest"]), int(blob["size"])
                member = tar.extractfile(_blob_member(tar, digest))
                if member is None:
                    raise RegistryError(f"{archive.name} has no blob {digest}")
                with member:
                    self._push_blob(repository, digest, size, member)
        self._put_manifest(repository, tag, manifest_bytes, media_type)
        return Pushed(f"{self.host}/{repository}:{tag}", uploaded=True)

    def push_squashfs(self, repository: str, tag: str, squashfs: Path, sha256: str) -> Pushed:
        """The SquashFS as one layer of an artifact manifest (its digest is the image's
        sha256), titled so that an ORAS client names the file it pulls."""
        if self._has_manifest(repository, tag):
            return Pushed(f"{self.host}/{repository}:{tag}", uploaded=False)
        digest, size = f"sha256:{sha256}", squashfs.stat().st_size
        with open(squashfs, "rb") as f:
            self._push_blob(repository, digest, size, f)
        self._push_blob(repository, str(EMPTY_CONFIG["digest"]), 2, None, b"{}")
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": SQUASHFS_TYPE,
            "config": EMPTY_CONFIG,
            "layers": [
                {
                    "mediaType": SQUASHFS_TYPE,
                    "digest": digest,
                    "size": size,
                    "annotations": {"org.opencontainers.image.title": "image.sqsh"},
                }
            ],
        }
        body = json.dumps(manifest, sort_keys=True).encode()
        self._put_manifest(repository, tag, body, OCI_MANIFEST)
        return Pushed(f"{self.host}/{repository}:{tag}", uploaded=True)

    def _has_manifest(self, repository: str, tag: str) -> bool:
        accept = {"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}
        response = self._request("HEAD", f"/v2/{repository}/manifests/{tag}", headers=accept)
        if response.status_code == 404:
            return False
        self._check(response, f"the manifest {repository}:{tag}")
        return True

    def _push_blob(
        self, repository: str, digest: str, size: int, source: IO[bytes] | None, data: bytes = b""
    ) -> None:
        """Once: a blob the repository has (HEAD) is not sent again; else one monolithic PUT."""
        found = self._request("HEAD", f"/v2/{repository}/blobs/{digest}")
        if found.status_code == 200:
            return
        started = self._request("POST", f"/v2/{repository}/blobs/uploads/")
        self._check(started, f"an upload to {repository}")
        location = started.headers.get("location", "")
        if not location:
            raise RegistryError(f"registry {self.host} gave no upload location for {repository}")
        # Appended by hand: the upload's own query (its state) must stay as it is.
        url = f"{location}{'&' if '?' in location else '?'}digest={digest}"
        content = _chunks(source) if source is not None else data
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        self._check(self._request("PUT", url, content=content, headers=headers), f"blob {digest}")

    def _put_manifest(self, repository: str, tag: str, body: bytes, media_type: str) -> None:
        response = self._request(
            "PUT", f"/v2/{repository}/manifests/{tag}", content=body,
            headers={"Content-Type": media_type},
        )  # fmt: skip
        self._check(response, f"the manifest {repository}:{tag}")

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return self.http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise RegistryError(
                f"registry {self.host} did not answer: {type(exc).__name__}"
            ) from None

    def _check(self, response: httpx.Response, what: str) -> None:
        if response.is_error:
            raise RegistryError(
                f"registry {self.host} refused {what} (HTTP {response.status_code}): "
                f"{_reason(response)}"
            )


def _layout_manifest(tar: tarfile.TarFile) -> tuple[bytes, str]:
    """The bytes and media type of the manifest an OCI layout tags ``latest``."""
    index = tar.extractfile(_member(tar, "index.json"))
    if index is None:
        raise RegistryError("the OCI archive has no index.json")
    with index:
        entries = json.load(index).get("manifests", [])
    for entry in entries:
        if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == TAG:
            blob = tar.extractfile(_blob_member(tar, entry["digest"]))
            if blob is None:
                raise RegistryError(f"the OCI archive has no blob {entry['digest']}")
            with blob:
                body = blob.read()
            if f"sha256:{hashlib.sha256(body).hexdigest()}" != entry["digest"]:
                raise RegistryError("the OCI archive's manifest does not match its digest")
            return body, str(entry.get("mediaType", OCI_MANIFEST))
    raise RegistryError(f"the OCI archive has no image tagged {TAG}")


def _blob_member(tar: tarfile.TarFile, digest: str) -> tarfile.TarInfo:
    algorithm, _, hexdigest = digest.partition(":")
    return _member(tar, f"blobs/{algorithm}/{hexdigest}")


def _member(tar: tarfile.TarFile, name: str) -> tarfile.TarInfo:
    # tar -C layout -cf x . names members ./index.json.
    for candidate in (name, f"./{name}"):
        try:
            return tar.getmember(candidate)
        except KeyError:
            continue
    raise RegistryError(f"the OCI archive has no {name}")


def _chunks(source: IO[bytes]) -> Iterator[bytes]:
    while chunk := source.read(_CHUNK):
        yield chunk


def _reason(response: httpx.Response) -> str:
    """The registry's own words (distribution answers {"errors": [{"code", "message"}]})."""
    try:
        errors = response.json().get("errors", [])
        return "; ".join(f"{e.get('code', '')} {e.get('message', '')}".strip() for e in errors)
    except (ValueError, AttributeError):
        return response.reason_phrase
