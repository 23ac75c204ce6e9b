"""What a grid job's wrapper and Concordia agree on about its data: where a file lies on an RSE.

The wrapper (concordia/backends/wrapper/concordia_job_lake.py) runs on worker nodes where
nothing of Concordia is installed, so it keeps its own copy of these rules;
tests/unit/core/test_datalake_layout.py checks that the two agree.
"""

from __future__ import annotations

import hashlib

#: What the wrapper lists its stored files in, for Concordia to register (in the output
#: sandbox).
DATALAKE_MANIFEST = "concordia-datalake.json"


def lake_path(scope: str, name: str) -> str:
    """Where Rucio's deterministic "hash" lfn2pfn puts ``scope:name`` under an RSE's prefix:
    user.jane -> user/jane, then the md5 of "scope:name" in two levels, then the name."""
    # Not a secret: Rucio's layout (FIPS hosts refuse md5 unless told so).
    digest = hashlib.md5(f"{scope}:{name}".encode(), usedforsecurity=False).hexdigest()
    top = scope.replace(".", "/") if scope.startswith(("user", "group")) else scope
    return f"{top}/{digest[0:2]}/{digest[2:4]}/{name}"
