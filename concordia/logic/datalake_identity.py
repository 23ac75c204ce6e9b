"""Which Rucio identity acts for a user in the data lake: their own IAM token where Rucio
takes it (datalake_user_tokens), else the operator's service account. A token Rucio took
serves the user's next operations until shortly before it expires: a thousand jobs' uploads
are not a thousand IAM refreshes and Rucio checks."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from concordia.auth.oidc import IamUnreachable
from concordia.core.tokens import unverified_claims
from concordia.datalake.errors import DatalakeError
from concordia.datalake.store import DataLake, connect_as_user
from concordia.logic.database import Database
from concordia.logic.datalake_tokens import storage_reader
from concordia.logic.iam_session import SessionEnded, audience_token
from concordia.logic.keyring import Keyring
from concordia.logic.platform import Platform
from concordia.settings import DatalakeSettings

log = logging.getLogger(__name__)

#: A token Rucio took is used again until this many seconds before it expires: an
#: operation started with it must reach Rucio and the storage in time.
TOKEN_MARGIN = 300.0


@dataclass(frozen=True, slots=True)
class LakeIdentity:
    """The data lake as one Rucio account, and whether it is the user's own."""

    lake: DataLake
    account: str
    own: bool

    @property
    def who(self) -> str:
        """Which identity acts, for logs and jobs (never its token)."""
        if self.own:
            return f"Rucio account {self.account} (the user's own IAM token)"
        return f"Rucio service account {self.account}"


def service_lake(datalake: DataLake | None) -> DataLake:
    """The data lake as the operator's service account: scopes are added with it."""
    if datalake is None:
        raise DatalakeError("this server has no data lake configured now")
    return datalake


@asynccontextmanager
async def lake_for(platform: Platform, user_id: int, username: str) -> AsyncIterator[LakeIdentity]:
    """The data lake as the user where Rucio accepts their IAM token (audience Rucio's),
    else as the service account: when user tokens are off, the user has no IAM sign-in
    Concordia keeps, IAM does not give a token, or Rucio does not take it as theirs."""
    service = LakeIdentity(
        service_lake(platform.datalake), platform.settings.datalake_account, False
    )
    lake = await _own_lake(platform.settings, platform.db, platform.keyring, user_id, username)
    if lake is None:
        yield service
        return
    try:
        yield LakeIdentity(lake, username, True)
    except DatalakeError:  # the token may be what failed: the next operation asks IAM again
        platform.keyring.lake_tokens.pop(user_id, None)
        raise
    finally:
        await lake.aclose()


async def _own_lake(
    settings: DatalakeSettings, db: Database, keyring: Keyring, user_id: int, username: str
) -> DataLake | None:
    """A client of Rucio as the user's own account, checked with whoami; None if there
    is none to have (why is logged, never a token)."""
    if not settings.datalake_user_tokens or keyring.iam is None:
        return None
    kept = keyring.lake_tokens.get(user_id)
    if kept is not None:
        return connect_as_user(settings, username, kept[0], storage_reader(settings, keyring))
    try:
        token = await audience_token(db, keyring, user_id, settings.datalake_token_audience)
    except (SessionEnded, IamUnreachable) as exc:
        log.info(
            "data lake: no IAM token of %s for Rucio (%s): the service account acts", username, exc
        )
        return None
    lake = connect_as_user(settings, username, token, storage_reader(settings, keyring))
    try:
        account = await lake.whoami()
    except DatalakeError as exc:
        account, why = "", str(exc)
    else:
        why = f"it is Rucio's account {account}"
    if account == username:
        _keep(keyring, user_id, token)
        return lake
    await lake.aclose()
    log.warning(
        "data lake: Rucio did not take %s's IAM token as theirs (%s): the service account acts",
        username,
        why,
    )
    return None


def _keep(keyring: Keyring, user_id: int, token: str) -> None:
    """Remember a token Rucio took as the user's, until TOKEN_MARGIN before it expires."""
    expires = (unverified_claims(token) or {}).get("exp")
    if not isinstance(expires, int | float):
        return
    left = expires - time.time() - TOKEN_MARGIN
    if left > 0:
        keyring.lake_tokens[user_id] = (token, time.monotonic() + left)
