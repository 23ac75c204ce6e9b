"""Upload tokens of grid jobs: the link each job is given, and the token it fetches with it
(one file, upload-only, short-lived), the issuer's public keys for storages."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

from concordia.auth.upload_tokens import UPLOAD_LINK, UPLOAD_LINKS, UploadIssuer
from concordia.auth.vault import VaultError
from concordia.core.datalake_layout import lake_path
from concordia.core.states import JobStatus
from concordia.datalake.errors import DatalakeError
from concordia.datalake.storage import StorageTokens
from concordia.db import datalake_files
from concordia.images.publication import link_signature, link_valid
from concordia.logic.datalake_choice import DID_NAME, name_prefix, stored_choice
from concordia.logic.errors import DomainError, Forbidden, Invalid, NotFound, Unavailable
from concordia.logic.keyring import Keyring
from concordia.logic.platform import Platform
from concordia.settings import DatalakeSettings

#: One answer for every refused link: it says why without telling what exists.
REFUSED = "this upload-token link is not valid: wrong signature, expired, or its job is over"
NO_TOKENS = "this server issues no upload tokens (datalake_upload_tokens is off)"
JWKS_PATH = "/.well-known/jwks.json"


def link_path(job_uuid: str) -> str:
    """The route of a job's upload-token link, below the server's public URL."""
    return f"/api/v1/grid/jobs/{job_uuid}/upload-token"


def upload_link(
    settings: DatalakeSettings, public_url: str, keys: list[bytes], job_uuid: str
) -> str:
    """The job's own link to fetch upload tokens with (its wrapper adds ``name``), below
    the server's ``public_url``: the link goes in the job's arguments, the token it fetches
    never does."""
    expires = int(time.time() + settings.datalake_upload_link_hours * 3600)
    signature = link_signature(keys[0], UPLOAD_LINK, job_uuid, expires)
    query = urlencode({"expires": expires, "sig": signature})
    return f"{public_url.rstrip('/')}{link_path(job_uuid)}?{query}"


def link_keys(keyring: Keyring) -> list[bytes] | None:
    """The keys that sign upload-token links; None where the server issues no tokens."""
    if keyring.upload_issuer is None:
        return None
    return keyring.vault.derived_keys(UPLOAD_LINKS)


def _issuer(keyring: Keyring) -> UploadIssuer:
    """The issuer with its key at hand; Unavailable where the key cannot be had."""
    if keyring.upload_issuer is None:
        raise NotFound(NO_TOKENS)
    try:
        keyring.upload_issuer.key()
    except VaultError:  # the operator replaced the vault's keys without keeping the old one
        raise Unavailable(
            "the upload-token signing key cannot be decrypted with the configured keys"
        ) from None
    except OSError as exc:
        raise Unavailable(f"the upload-token signing key cannot be kept: {exc}") from None
    return keyring.upload_issuer


async def upload_token(
    platform: Platform, job_uuid: str, name: str, expires: int, signature: str
) -> str:
    """A fresh token that may create ``scope:name`` on the job's RSE, for the job the link
    was signed for while it is not over, for a name of its own (its name prefix)."""
    issuer = _issuer(platform.keyring)
    keys = platform.keyring.vault.derived_keys(UPLOAD_LINKS)
    if not link_valid(keys, UPLOAD_LINK, job_uuid, expires, signature, time.time()):
        raise Forbidden(REFUSED)
    async with platform.reading() as session:
        found = await datalake_files.uploading_job(session, job_uuid)
    if found is None or JobStatus(found[0].status).is_final:
        raise Forbidden(REFUSED)
    job, submission, username = found
    choice = stored_choice(submission)
    if choice is None or platform.datalake is None:
        raise Forbidden("this job stores no data in the data lake")
    prefix = name_prefix(
        submission.application, submission.id, job.index, job.uuid, job.reschedule_count
    )
    if not name.startswith(prefix) or not DID_NAME.fullmatch(name):
        raise Invalid("name", f"not a file name of this job (they start with {prefix})", "query")
    try:
        audience = await platform.datalake.rse_url(choice.rse)
    except DatalakeError as exc:
        raise Unavailable(f"the data lake does not say where {choice.rse} is: {exc}") from None
    lifetime = platform.settings.datalake_upload_token_lifetime
    path = "/" + lake_path(choice.scope, name)
    return issuer.mint(username, audience, [path], lifetime)


def storage_reader(settings: DatalakeSettings, keyring: Keyring) -> StorageTokens | None:
    """Where Concordia's own reads of an RSE (the check of what a grid job stored, a
    download) get a token, when the RSEs trust it as an issuer (datalake_upload_tokens):
    one that may read that file alone. None: its reads carry no token."""
    if keyring.upload_issuer is None:
        return None

    def token(audience: str, path: str) -> str:
        try:
            issuer = _issuer(keyring)
        except DomainError as exc:
            raise DatalakeError(f"no token to read the storage with: {exc.message}") from None
        lifetime = settings.datalake_upload_token_lifetime
        return issuer.mint(
            settings.datalake_account, audience, [path], lifetime, allows="storage.read"
        )

    return token


def jwks(keyring: Keyring) -> dict[str, Any]:
    """The issuer's public keys (its signing key made on first use)."""
    return _issuer(keyring).jwks()


def discovery(keyring: Keyring) -> dict[str, Any]:
    """The issuer's OpenID discovery document: where storages find its keys."""
    issuer = _issuer(keyring)
    return issuer.discovery(issuer.issuer + JWKS_PATH)
