"""What signs users in and keeps their secrets: the vault, IAM, per-user locks, trusted tokens."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field

from cachetools import TLRUCache

from concordia.auth.oidc import Iam
from concordia.auth.upload_tokens import UploadIssuer
from concordia.auth.vault import Vault
from concordia.logic.identity import Identity
from concordia.settings import DatalakeSettings, ServerSettings

#: API tokens a process trusts at once, at most (each a few hundred bytes): the clients of
#: a collaboration, with room to spare; the least recently used go first.
TRUSTED_TOKENS = 4096

#: The upload-token signing key in the data dir (encrypted with the vault).
UPLOAD_SIGNING_KEY = "upload-signing-key"


def _deadline(_key: object, value: tuple[object, float], _now: float) -> float:
    """An entry is kept until its own deadline (its second item, on the monotonic clock)."""
    return value[1]


@dataclass
class Keyring:
    #: Encrypts users' secrets at rest (IAM tokens, credentials, proxies).
    vault: Vault
    #: The IAM issuer; None in local mode.
    iam: Iam | None = None
    #: Signs grid jobs' upload tokens; None: the RSEs do not trust Concordia as an issuer.
    upload_issuer: UploadIssuer | None = None
    #: Per user: one IAM token refresh at a time, one proxy creation at a time.
    token_locks: defaultdict[int, asyncio.Lock] = field(
        default_factory=lambda: defaultdict(asyncio.Lock)
    )
    proxy_locks: defaultdict[int, asyncio.Lock] = field(
        default_factory=lambda: defaultdict(asyncio.Lock)
    )
    #: API tokens checked lately (logic.accounts.api_token_identity): token digest ->
    #: (the caller, until when, on the monotonic clock).
    trusted_tokens: TLRUCache[str, tuple[Identity, float]] = field(
        default_factory=lambda: TLRUCache(maxsize=TRUSTED_TOKENS, ttu=_deadline)
    )
    #: IAM tokens Rucio took as their users' own (logic.datalake_identity): user id ->
    #: (the token, until when on the monotonic clock).
    lake_tokens: TLRUCache[int, tuple[str, float]] = field(
        default_factory=lambda: TLRUCache(maxsize=TRUSTED_TOKENS, ttu=_deadline)
    )


def upload_issuer(
    settings: DatalakeSettings, server: ServerSettings, vault: Vault
) -> UploadIssuer | None:
    """The issuer of grid jobs' upload tokens, its key in the data dir; None unless the RSEs
    trust Concordia as an issuer."""
    if not settings.datalake_upload_tokens:
        return None
    return UploadIssuer(server.data_dir / UPLOAD_SIGNING_KEY, vault, server.public_url)
