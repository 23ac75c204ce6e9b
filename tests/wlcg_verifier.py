"""A storage's WLCG token check behind nginx's auth_request (a test double of what StoRM
WebDAV, dCache or EOS do for an issuer they trust): the signature with the issuer's keys
fetched over HTTP (its discovery document, then its JWKS), iss, aud, exp, and the request's
method and path against the token's storage.* scopes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

from concordia.datalake.rucio import Rucio
from tests.rucio import RucioServer

#: What each method needs (WLCG Common JWT Profile, storage authorization).
UPLOADS = frozenset({"PUT", "MKCOL"})
READS = frozenset({"GET", "HEAD", "PROPFIND"})


@dataclass
class Trust:
    """The issuer a storage trusts, the audience it answers to, the URL path its root is
    served at (base, ending in /) and where it keeps its files."""

    issuer: str
    audience: str
    base: str
    root: Path
    #: Each answer given, (status, why): tests see why a request was refused.
    decisions: list[tuple[int, str]] = field(default_factory=list)


async def rse_trust(rucio_server: RucioServer, issuer: str, rse: str) -> Trust:
    """What the test RSEs' token-only storage (/token/) is configured with: ``issuer``
    (Concordia's public URL) and, as audience, ``rse``'s URL as Rucio gives it (Concordia's
    tokens name it)."""
    client = Rucio(
        rucio_server.url, rucio_server.service,
        password=rucio_server.password(rucio_server.service), verify=rucio_server.ca,
    )  # fmt: skip
    try:
        audience = await client.rse_url(rse)
    finally:
        await client.aclose()
    root = rucio_server.state_dir / "nginx" / "webdav" / "rucio"
    return Trust(issuer=issuer, audience=audience, base="/token/", root=root)


def issuer_keys(issuer: str) -> KeySet:
    """The issuer's keys, found as a storage finds them: from its discovery document."""
    discovery = httpx.get(f"{issuer.rstrip('/')}/.well-known/openid-configuration", timeout=10)
    discovery.raise_for_status()
    keys = httpx.get(discovery.json()["jwks_uri"], timeout=10)
    keys.raise_for_status()
    return KeySet.import_key_set(keys.json())


def covers(scope_path: str, path: str) -> bool:
    """Whether a scope's path holds ``path``: itself or below it, never a sibling that
    shares its first characters (/a covers /a/b, not /ab)."""
    top = scope_path.rstrip("/")
    return top == "" or path == top or path.startswith(top + "/")


def check(trust: Trust, method: str, uri: str, authorization: str) -> tuple[int, str]:
    """(204: allowed, 401: no valid token, 403: the token does not allow it; why)."""
    scheme, _, raw = authorization.partition(" ")
    if scheme.lower() != "bearer" or not raw:
        return 401, "no bearer token"
    try:
        token = jwt.decode(raw.strip(), issuer_keys(trust.issuer), algorithms=["ES256"])
        JWTClaimsRegistry(
            iss={"essential": True, "value": trust.issuer},
            aud={"essential": True, "value": trust.audience},
            exp={"essential": True},
        ).validate(token.claims)
    except (JoseError, ValueError) as exc:
        return 401, f"token refused: {exc}"
    if token.claims.get("wlcg.ver") != "1.0":
        return 401, "not a WLCG token"
    path = unquote(urlsplit(uri).path)
    if not path.startswith(trust.base) or "/../" in path + "/":
        return 403, f"{path} is not in this storage"
    path = "/" + path[len(trust.base) :]
    need = "storage.create" if method in UPLOADS else "storage.read" if method in READS else ""
    granted = [
        scope.partition(":")[2]
        for scope in str(token.claims.get("scope", "")).split()
        if scope.partition(":")[0] == need
    ]
    if not need or not any(covers(scope_path, path) for scope_path in granted):
        return 403, f"the token does not allow {method} {path}"
    if method == "PUT" and (trust.root / path.lstrip("/")).exists():
        return 403, f"storage.create does not overwrite {path}"
    return 204, "allowed"


@contextmanager
def running_verifier(trust: Trust, port: int) -> Iterator[Trust]:
    """The verifier on loopback ``port`` (where the test nginx asks) while the block runs."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, why = check(
                trust,
                self.headers.get("X-Original-Method", ""),
                self.headers.get("X-Original-URI", ""),
                self.headers.get("Authorization", ""),
            )
            trust.decisions.append((status, why))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass  # the decisions say it

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield trust
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
