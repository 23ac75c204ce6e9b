"""Concordia's rules of where a grid job's data lie are the job wrapper's own: it keeps a
copy (nothing of Concordia is installed on a worker node), and the two must not drift."""

from __future__ import annotations

import pytest

from concordia.backends.wrapper import concordia_job_lake as wrapper
from concordia.core import datalake_layout


def test_the_manifest_is_the_one_the_wrapper_writes() -> None:
    assert datalake_layout.DATALAKE_MANIFEST == wrapper.DATALAKE_MANIFEST


@pytest.mark.parametrize(
    ("scope", "name"),
    [
        ("user.jane", "sim.7.3r1.0123abcd.DAT000001.corsika.zst"),
        ("group.cta.lst", "a b+c%.dat"),
        ("user", "x"),
        ("mc23", "ds.000042.histo.root"),
        ("usery.z", "é.dat"),
    ],
)
def test_a_file_lies_where_the_wrapper_puts_it(scope: str, name: str) -> None:
    assert datalake_layout.lake_path(scope, name) == wrapper.lake_path(scope, name)
