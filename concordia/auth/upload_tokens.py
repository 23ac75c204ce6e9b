"""Concordia as a WLCG-profile token issuer: short-lived, upload-only tokens for grid jobs."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey

from concordia.auth.vault import Vault

#: What the keys of upload-token links are derived for (not those of image links: a link
#: to an image never fetches a token).
UPLOAD_LINKS = b"concordia upload token links v1"
#: The first field of an upload-token link's signature (publication.link_signature's image).
UPLOAD_LINK = "upload-token"
ALGORITHM = "ES256"
#: The WLCG token profile's version (wlcg.ver).
WLCG_VERSION = "1.0"


class UploadIssuer:
    """The signing key (EC P-256), made on first use and kept in ``key_file`` encrypted
    with the server's vault (0600); tokens it signs for one upload each."""

    def __init__(self, key_file: Path, vault: Vault, issuer: str) -> None:
        self.key_file = key_file
        self.vault = vault
        self.issuer = issuer.rstrip("/")
        self._key: ECKey | None = None
        self._lock = threading.Lock()

    def key(self) -> ECKey:
        """The signing key, read (or made and written) once per process."""
        with self._lock:
            if self._key is None:
                self._key = self._load_or_make()
            return self._key

    def _load_or_make(self) -> ECKey:
        try:
            sealed = self.key_file.read_text()
        except FileNotFoundError:
            made = ECKey.generate_key("P-256", private=True)
            sealed = self.vault.encrypt(made.as_pem(private=True))
            tmp = self.key_file.with_name(f"{self.key_file.name}.{os.getpid()}.tmp")
            self.key_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(sealed)
            # Two processes starting at once: the first key linked wins, the other reads it.
            try:
                os.link(tmp, self.key_file)
            except FileExistsError:
                sealed = self.key_file.read_text()
            finally:
                tmp.unlink(missing_ok=True)
        return ECKey.import_key(self.vault.decrypt(sealed.strip()))

    def jwks(self) -> dict[str, Any]:
        """The public key set storages check tokens with (GET /.well-known/jwks.json)."""
        key = self.key()
        public = key.as_dict(private=False)
        return {"keys": [{**public, "kid": key.thumbprint(), "use": "sig", "alg": ALGORITHM}]}

    def discovery(self, jwks_uri: str) -> dict[str, Any]:
        """The OpenID discovery document a storage reads to trust this issuer."""
        return {
            "issuer": self.issuer,
            "jwks_uri": jwks_uri,
            "id_token_signing_alg_values_supported": [ALGORITHM],
            "token_endpoint_auth_signing_alg_values_supported": [ALGORITHM],
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
            "scopes_supported": ["storage.create:/", "storage.read:/"],
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "scope"],
        }

    def mint(
        self,
        subject: str,
        audience: str,
        paths: list[str],
        lifetime: int,
        *,
        allows: str = "storage.create",
    ) -> str:
        """A token that may create (not read, not overwrite) the files at ``paths`` (below
        the storage's base path, each starting with /) for ``lifetime`` seconds; with
        ``allows`` "storage.read", that may read them (and nothing else)."""
        key = self.key()
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "jti": str(uuid.uuid4()),
            "wlcg.ver": WLCG_VERSION,
            "scope": " ".join(f"{allows}:{path}" for path in paths),
        }
        header = {"alg": ALGORITHM, "kid": key.thumbprint(), "typ": "at+jwt"}
        return jwt.encode(header, claims, key)
