"""The CLI's IAM tokens (from `concordia login`): kept 0600 per Concordia URL, refreshed."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx

#: Refresh a token this long before it expires: a command must not fail half way.
MARGIN_SECONDS = 60


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


def remember(path: Path, url: str, entry: dict[str, Any]) -> None:
    data = _load(path)
    data[url] = entry
    _save(path, data)


def forget(path: Path, url: str) -> bool:
    data = _load(path)
    if data.pop(url, None) is None:
        return False
    _save(path, data)
    return True


def entry_of(
    token: dict[str, Any],
    issuer: str,
    client_id: str,
    token_endpoint: str,
    audience: str | None = None,
) -> dict[str, Any]:
    return {
        "access_token": token["access_token"],
        "refresh_token": token.get("refresh_token"),
        "expires_at": int(time.time()) + int(token.get("expires_in", 3600)),
        "issuer": issuer,
        "client_id": client_id,
        "token_endpoint": token_endpoint,
        "audience": audience,
    }


def access_token(path: Path, url: str) -> str | None:
    """The stored access token for ``url``, refreshed when due; None when there is none or it
    cannot be renewed (the server's 401 then says to log in again)."""
    data = _load(path)
    entry = data.get(url)
    if not isinstance(entry, dict) or "access_token" not in entry:
        return None
    if entry.get("expires_at", 0) - MARGIN_SECONDS > time.time():
        return str(entry["access_token"])
    if not entry.get("refresh_token"):
        return None
    form = {
        "grant_type": "refresh_token",
        "refresh_token": entry["refresh_token"],
        "client_id": entry["client_id"],
    }
    if entry.get("audience"):  # the renewed token must still be for the server's audience
        form["aud"] = entry["audience"]
    try:
        response = httpx.post(entry["token_endpoint"], data=form, timeout=30)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    token = response.json()
    token.setdefault("refresh_token", entry["refresh_token"])
    renewed = entry_of(
        token, entry["issuer"], entry["client_id"], entry["token_endpoint"], entry.get("audience")
    )
    remember(path, url, renewed)
    return str(token["access_token"])
