"""Secrets at rest (IAM tokens, user credentials, proxies): encrypted with Fernet keys."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import SecretStr


class VaultError(Exception):
    """A secret could not be decrypted: the key changed or the row was tampered with."""


class Vault:
    """Encrypts with the first key, decrypts with any: keys can be rotated without loss."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ValueError("the vault needs at least one key")
        self._fernet = MultiFernet([Fernet(key) for key in keys])
        self._keys = [base64.urlsafe_b64decode(key) for key in keys]

    def derived_keys(self, purpose: bytes) -> list[bytes]:
        """Keys for ``purpose`` (e.g. signing links), one per vault key in the same order:
        nothing new to keep secret, rotated with the vault's keys, and none of them reveals
        the vault's own."""
        return [hmac.new(key, purpose, hashlib.sha256).digest() for key in self._keys]

    def encrypt(self, data: bytes) -> str:
        return self._fernet.encrypt(data).decode("ascii")

    def decrypt(self, token: str) -> bytes:
        try:
            return self._fernet.decrypt(token.encode("ascii"))
        except (InvalidToken, ValueError):
            raise VaultError(
                "a stored secret cannot be decrypted with the configured keys"
            ) from None


def open_vault(configured: list[SecretStr], key_file: Path) -> Vault:
    """The operator's keys (several processes share them), else one kept 0600 in the data dir."""
    if configured:
        return Vault([k.get_secret_value().encode() for k in configured])
    try:
        key = key_file.read_bytes().strip()
    except FileNotFoundError:
        key = Fernet.generate_key()
        tmp = key_file.with_name(f"{key_file.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key + b"\n")
        # Two processes starting at once: the first key linked wins, the other reads it.
        try:
            os.link(tmp, key_file)
        except FileExistsError:
            key = key_file.read_bytes().strip()
        finally:
            tmp.unlink(missing_ok=True)
    return Vault([key])
