"""Which outputs of an application are data for the data lake, and the checks on them."""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from concordia.core.application import ApplicationDef, DatalakeDef
from concordia.logic.applications import ApplicationCatalog
from concordia.settings import SHIPPED_APPLICATIONS


def app_with(outputs: list[str], datalake: dict[str, Any] | None) -> ApplicationDef:
    definition: dict[str, Any] = {
        "name": "big",
        "title": "Big outputs",
        "command": "make-data",
        "outputs": outputs,
    }
    if datalake is not None:
        definition["datalake"] = datalake
    return ApplicationDef.model_validate(definition)


@pytest.fixture(scope="module")
def shipped() -> dict[str, ApplicationDef]:
    catalog = ApplicationCatalog(Path(SHIPPED_APPLICATIONS)).load()
    assert catalog.errors == {}
    return catalog.apps


def test_corsika_stores_its_photon_files_in_the_data_lake_by_default(
    shipped: dict[str, ApplicationDef],
) -> None:
    corsika = shipped["corsika"]
    assert corsika.datalake == DatalakeDef(default=True, data=["*.corsika.zst"])
    # The file corsika_job.py names is a data output; the card and the log are not.
    written = "run000007_gamma_za20_azm000_Paranal_lst.corsika.zst"
    assert any(fnmatch.fnmatchcase(written, glob) for glob in corsika.outputs)
    assert fnmatch.fnmatchcase(written, corsika.datalake.data[0])
    for small in ("run7.input", "run7.corsika.log"):
        assert any(fnmatch.fnmatchcase(small, glob) for glob in corsika.outputs)
        assert not fnmatch.fnmatchcase(small, corsika.datalake.data[0])


def test_showermodel_offers_its_photon_file_and_hello_has_no_data(
    shipped: dict[str, ApplicationDef],
) -> None:
    showermodel = shipped["showermodel"]
    assert showermodel.datalake == DatalakeDef(default=False, data=["photons_run*.npy"])
    # Without the data lake the photon file comes back in the sandbox like any output.
    assert "photons_run*.npy" in showermodel.outputs
    assert shipped["hello"].datalake is None


def test_data_globs_are_outputs_or_match_them() -> None:
    listed = app_with(["*.dat", "log.txt"], {"data": ["*.dat"]})
    assert listed.datalake == DatalakeDef(default=False, data=["*.dat"])
    # A wider glob selects the outputs it matches: '*.zst' covers 'run*.zst'.
    wider = app_with(["run*.zst", "run*.log"], {"default": True, "data": ["*.zst"]})
    assert wider.datalake is not None and wider.datalake.default


@pytest.mark.parametrize(
    ("outputs", "datalake", "message"),
    [
        (
            ["run*.log"],
            {"data": ["*.zst"]},
            "datalake.data glob '*.zst' matches none of the outputs (run*.log): "
            "list it in outputs too",
        ),
        ([], {"data": ["*.h5"]}, "matches none of the outputs (none)"),
        # A narrower glob than the output could name files the sandbox does not return.
        (["run*.zst"], {"data": ["run1*.zst"]}, "'run1*.zst' matches none of the outputs"),
        (["*.zst"], {"default": True}, "datalake.default is true but datalake.data names no"),
        (["*.zst"], {"data": ["*.zst", "*.zst"]}, "data globs must not repeat"),
        (["*.zst"], {"data": [" "]}, "must be a non-empty glob on one line"),
        (["*.zst"], {"data": ["a\nb"]}, "must be a non-empty glob on one line"),
        (["*.zst"], {"data": ["*.zst"], "rse": "X"}, "Extra inputs are not permitted"),
    ],
)
def test_data_globs_that_do_not_fit_are_refused(
    outputs: list[str], datalake: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match="datalake") as info:
        app_with(outputs, datalake)
    assert message in str(info.value)


def test_an_application_without_datalake_uses_the_sandbox_only() -> None:
    app = app_with(["*.dat"], None)
    assert app.datalake is None
    assert app_with(["*.dat"], {}).datalake == DatalakeDef(default=False, data=[])
