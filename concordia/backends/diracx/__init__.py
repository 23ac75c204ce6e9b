"""The DiracX backend: jobs on the grid through DIRAC's REST API (over HTTP only: DiracX is
GPL-3.0 and none of its packages is imported here)."""

from concordia.backends.diracx.backend import DiracXBackend
from concordia.backends.diracx.client import DiracXError, DiracXUnreachable

__all__ = ["DiracXBackend", "DiracXError", "DiracXUnreachable"]
