"""What Concordia needs of a data lake: the Rucio client's interface, as a protocol (fakes too)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from concordia.datalake.rucio import Rucio
from concordia.datalake.rucio_dids import DataFile
from concordia.datalake.storage import StorageTokens
from concordia.settings import DatalakeSettings


class DataLake(Protocol):
    """A Rucio server as one account sees it (concordia.datalake.rucio.Rucio)."""

    async def aclose(self) -> None: ...

    async def whoami(self) -> str: ...

    async def ensure_scope(self, scope: str, account: str) -> None: ...

    async def add_dataset(
        self, scope: str, name: str, meta: Mapping[str, str | int | float]
    ) -> bool: ...

    async def upload(
        self,
        path: Path,
        scope: str,
        name: str,
        rse: str,
        *,
        dataset: tuple[str, str] | None = None,
        meta: Mapping[str, str | int | float] = {},
    ) -> DataFile: ...

    async def register(
        self,
        scope: str,
        name: str,
        rse: str,
        *,
        bytes: int,
        adler32: str,
        dataset: tuple[str, str] | None = None,
        meta: Mapping[str, str | int | float] = {},
    ) -> DataFile: ...

    async def rse_url(self, rse: str) -> str: ...

    async def file(self, scope: str, name: str) -> DataFile: ...

    async def files(self, scope: str, dataset: str) -> list[DataFile]: ...

    async def metadata(self, scope: str, name: str) -> dict[str, Any]: ...

    def open(self, scope: str, name: str) -> AsyncIterator[bytes]: ...


def connect(settings: DatalakeSettings, storage_tokens: StorageTokens | None = None) -> DataLake:
    """The data lake of the settings, as the operator's service account; its reads of
    storages that want a token get one from ``storage_tokens``."""
    return Rucio(
        settings.datalake_url,
        settings.datalake_account,
        password=settings.datalake_password.get_secret_value(),
        username=settings.datalake_account,
        auth_url=settings.datalake_auth_url,
        verify=settings.datalake_verify,
        storage_tokens=storage_tokens,
    )


def connect_as_user(
    settings: DatalakeSettings,
    account: str,
    token: str,
    storage_tokens: StorageTokens | None = None,
) -> DataLake:
    """The data lake as a user's own Rucio ``account``, with their IAM access token (its
    audience Rucio's): sent as Rucio's client sends an OIDC token, never renewed here."""
    return Rucio(
        settings.datalake_url,
        account,
        token=token,
        auth_url=settings.datalake_auth_url,
        verify=settings.datalake_verify,
        storage_tokens=storage_tokens,
    )
