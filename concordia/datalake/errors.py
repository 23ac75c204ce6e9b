"""What goes wrong in the data lake, in words a user can read."""

from __future__ import annotations


class DatalakeError(Exception):
    """A Rucio or storage failure, in words a user can read (never a secret in them);
    ``kind`` is Rucio's exception class where Rucio said it ("" otherwise)."""

    def __init__(self, message: str, *, kind: str = "") -> None:
        super().__init__(message)
        self.kind = kind


class NotFound(DatalakeError):
    """No such DID (or replica, RSE, scope)."""
