"""What a JWT says of itself, read without checking its signature: whom it names and until
when, where the party that issued it is the one that checks it."""

from __future__ import annotations

import json
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError


def unverified_claims(token: str) -> dict[str, Any] | None:
    """The token's claims; None if it is not a JWT (or its payload not a JSON object)."""
    try:
        claims = json.loads(jws.extract_compact(token.encode()).payload)
    except (ValueError, JoseError, RecursionError):
        return None
    return claims if isinstance(claims, dict) else None
