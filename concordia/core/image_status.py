"""An image's states, as the images table stores them."""

from __future__ import annotations

from enum import StrEnum


class ImageStatus(StrEnum):
    BUILDING = "building"
    READY = "ready"
    FAILED = "failed"
    #: A build its user stopped: its jobs fail ("Image build cancelled"), retry builds again.
    CANCELLED = "cancelled"
    #: Its last user let go of it: its files are gone, its row stays for its submissions.
    DELETED = "deleted"


# The members under their own names, for the reconciler, which compares rows with them.
BUILDING = ImageStatus.BUILDING
FAILED = ImageStatus.FAILED
CANCELLED = ImageStatus.CANCELLED
