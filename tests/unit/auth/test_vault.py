"""Secrets at rest: Fernet encryption, key rotation, tampering, the key file's mode."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from concordia.auth.vault import Vault, VaultError, open_vault


def test_encrypts_and_reads_back_and_rotation_keeps_old_secrets(tmp_path: Path) -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    stored = Vault([old]).encrypt(b"-----BEGIN PRIVATE KEY-----")
    assert b"PRIVATE" not in stored.encode()
    rotated = open_vault([SecretStr(new.decode()), SecretStr(old.decode())], tmp_path / "k")
    assert rotated.decrypt(stored) == b"-----BEGIN PRIVATE KEY-----"
    assert not (tmp_path / "k").exists()  # configured keys: no key file
    with pytest.raises(VaultError):
        Vault([new]).decrypt(stored)  # the old key dropped: refused, not garbage
    with pytest.raises(VaultError):
        Vault([old]).decrypt(stored[:-4] + "AAAA")  # tampered


def test_the_generated_key_is_private_and_kept(tmp_path: Path) -> None:
    key_file = tmp_path / "encryption-key"
    first = open_vault([], key_file)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    secret = first.encrypt(b"token")
    assert open_vault([], key_file).decrypt(secret) == b"token"  # the next start reads it
    assert [p.name for p in tmp_path.iterdir()] == ["encryption-key"]
