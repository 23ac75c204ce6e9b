"""Sizes and durations as people read them, the same on the web pages and in the CLI."""

from __future__ import annotations

#: Binary units, as file managers and `ls -lh` count: 1 KiB = 1,024 bytes.
_SIZE_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def size_text(size: int) -> str:
    """A size in binary units: 512 bytes, 1.5 KiB, 1.4 GiB."""
    if size < 1024:
        return f"{size} byte{'' if size == 1 else 's'}"
    value = float(size)
    for unit in _SIZE_UNITS:
        value /= 1024
        if value < 1024 or unit == _SIZE_UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")  # the loop returns at its last unit


def duration(seconds: float) -> str:
    """CPU time as people read it: 1,505 s (25 min)."""
    text = f"{seconds:,.0f} s"
    if seconds >= 7200:
        return f"{text} ({seconds / 3600:.1f} h)"
    if seconds >= 120:
        return f"{text} ({seconds / 60:.0f} min)"
    return text
