"""The operator-provided files of a build (Settings.sources): fetched, checked by sha256."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import IO

import httpx

from concordia.images.builders import BuildError
from concordia.images.plan import BuildPlan


def fetch_sources(plan: BuildPlan, context: Path, log: IO[str]) -> dict[str, Path]:
    """Copy or download each operator-provided file and check its sha256: dest -> local file."""
    found = {}
    for index, (dest, source) in enumerate(sorted(plan.sources.items())):
        target = context / f"source-{index}"
        log.write(f"fetching {source.url} for {dest}\n")
        log.flush()
        digest = hashlib.sha256()
        try:
            with open(target, "wb") as out:
                if source.url.startswith(("http://", "https://")):
                    with httpx.stream("GET", source.url, follow_redirects=True, timeout=60) as r:
                        r.raise_for_status()
                        for chunk in r.iter_bytes(1 << 20):
                            digest.update(chunk)
                            out.write(chunk)
                else:
                    with open(source.url.removeprefix("file://"), "rb") as src:
                        while chunk := src.read(1 << 20):
                            digest.update(chunk)
                            out.write(chunk)
        except (OSError, httpx.HTTPError) as exc:
            raise BuildError(f"cannot fetch {source.url}: {exc}") from exc
        if digest.hexdigest() != source.sha256:
            raise BuildError(f"{source.url} has sha256 {digest.hexdigest()}, not {source.sha256}")
        found[dest] = target
    return found


def fetch_targets(plan: BuildPlan, context: Path) -> dict[str, Path]:
    """Where fetch_sources puts each source (dest -> file in the context)."""
    return {dest: context / f"source-{i}" for i, dest in enumerate(sorted(plan.sources))}
