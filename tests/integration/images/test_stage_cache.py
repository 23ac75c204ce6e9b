"""The stage cache's bounds and safety on a real file system (stages of plain files)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from concordia.core.recipe import Recipe
from concordia.images.mmdebstrap import MmdebstrapBuilder, pip_key
from concordia.images.plan import BuildPlan
from concordia.images.stages import StageCache

pytestmark = pytest.mark.real

MB = 1 << 20


def filled(size: int) -> Callable[[Path], None]:
    def fill(tmp: Path) -> None:
        (tmp / "rootfs").mkdir()
        (tmp / "rootfs" / "blob").write_bytes(os.urandom(size))

    return fill


def cache_of(tmp_path: Path, limit: int) -> StageCache:
    cache = StageCache(tmp_path / "stages", limit)
    cache.prepare()
    return cache


def keys(cache: StageCache) -> set[str]:
    return {p.name for p in cache.root.iterdir() if not p.name.startswith(".")}


def test_the_least_recently_used_stage_not_in_use_goes_first(tmp_path: Path) -> None:
    cache = cache_of(tmp_path, limit=int(2.5 * MB))
    for key in ("a", "b"):
        held = cache.store(key, filled(MB))
        assert held is not None
        held.lock.close()
    os.utime(cache.root / "a" / "stage.json", (1, 1))  # "a" used long ago,
    os.utime(cache.root / "b" / "stage.json", (2, 2))
    reused = cache.hold("a")  # ... now used again: "b" is the least recently used
    assert reused is not None
    reused.lock.close()
    held_c = cache.store("c", filled(MB))
    assert cache.evict() == ["b"] and keys(cache) == {"a", "c"}
    assert cache.summary().stages == 2 and cache.summary().size <= cache.limit
    # A stage a build holds stays, over the limit, until it is let go.
    cache.limit = MB // 2
    assert held_c is not None
    assert cache.evict() == ["a"] and keys(cache) == {"c"}
    held_c.lock.close()
    assert cache.evict() == ["c"] and keys(cache) == set()
    assert cache.hold("c") is None


def test_a_stage_is_there_only_once_complete(tmp_path: Path) -> None:
    cache = cache_of(tmp_path, limit=100 * MB)

    def crash(tmp: Path) -> None:
        filled(MB)(tmp)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        cache.store("a", crash)
    assert keys(cache) == set() and cache.hold("a") is None
    assert list((cache.root / ".tmp").iterdir()) == []
    # Two builds storing the same stage: the first stays, the second gets it.
    first = cache.store("a", filled(MB))
    second = cache.store("a", filled(MB))
    assert first is not None and second is not None
    assert (first.rootfs / "blob").read_bytes() == (second.rootfs / "blob").read_bytes()
    # A rebuild's fresh stage replaces the old one, but not while a build holds it.
    assert cache.store("a", filled(MB), replace=True) is not None
    assert (first.rootfs / "blob").exists()
    first.lock.close()
    second.lock.close()
    fresh = cache.store("a", filled(2 * MB), replace=True)
    assert fresh is not None and (fresh.rootfs / "blob").stat().st_size == 2 * MB


def test_a_stage_key_covers_what_makes_the_stage() -> None:
    builder = MmdebstrapBuilder("mmdebstrap 1.3.5")

    def plan(**recipe: object) -> BuildPlan:
        base = {"packages": ["python3"], "pip": ["numpy"], "steps": ["echo {model}"]}
        return BuildPlan("0" * 64, "app", Recipe.model_validate({**base, **recipe}), {"model": 1})

    key = builder.base_key(plan())
    assert builder.base_key(plan(steps=["echo other {model}"])) == key  # steps: a later stage
    assert builder.base_key(plan(packages=["python3", "gfortran"])) != key
    assert builder.base_key(plan(base="debian:trixie")) != key
    assert builder.base_key(plan(variant="extract")) != key
    assert MmdebstrapBuilder("mmdebstrap 1.4.0").base_key(plan()) != key
    assert pip_key(plan(), key) != pip_key(plan(pip=["numpy", "scipy"]), key)
    assert pip_key(plan(), key) != pip_key(plan(), "another base")
    assert pip_key(plan(), key) != pip_key(plan(env={"PIP_INDEX_URL": "x"}), key)
