"""/.well-known: Concordia as the issuer of grid jobs' upload tokens, for storages to trust."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from concordia.logic import datalake_tokens
from concordia.web.deps import PlatformDep
from concordia.web.errors import documented

router = APIRouter(tags=["issuer"])


@router.get("/.well-known/openid-configuration", responses=documented(404))
async def openid_configuration(platform: PlatformDep) -> dict[str, Any]:
    """The upload-token issuer's discovery document (issuer, jwks_uri)."""
    return datalake_tokens.discovery(platform.keyring)


@router.get("/.well-known/jwks.json", responses=documented(404))
async def jwks(platform: PlatformDep) -> dict[str, Any]:
    """The public keys upload tokens are signed with."""
    return datalake_tokens.jwks(platform.keyring)
