"""The data-lake settings and a submission's choice: defaults, RSEs, names, scope."""

from __future__ import annotations

from pathlib import Path

import pytest

from concordia.core.application import ApplicationDef, DatalakeDef
from concordia.logic.datalake_choice import DatalakeRequest, choose, file_name
from concordia.logic.errors import Invalid
from concordia.settings import Settings


def settings(tmp_path: Path, **values: object) -> Settings:
    lake: dict[str, object] = {"datalake_url": "https://rucio.example.org/", "datalake_rse": "A"}
    return Settings(data_dir=tmp_path, **(lake | values))  # type: ignore[arg-type]


def app(default: bool) -> ApplicationDef:
    return ApplicationDef(
        name="sim", title="Sim", command="true", outputs=["*.dat"],
        datalake=DatalakeDef(default=default, data=["*.dat"]),
    )  # fmt: skip


def test_the_rses_users_may_choose_default_to_the_one_rse(tmp_path: Path) -> None:
    s = settings(tmp_path)
    assert s.datalake_enabled and s.datalake_rses == ["A"]
    assert s.datalake_auth_url == "https://rucio.example.org"
    assert settings(tmp_path, datalake_rses=["B"]).datalake_rses == ["A", "B"]
    assert not Settings(data_dir=tmp_path).datalake_enabled
    with pytest.raises(ValueError, match="datalake_rse is needed"):
        Settings(data_dir=tmp_path, datalake_url="https://rucio.example.org")


def test_the_default_follows_the_application(tmp_path: Path) -> None:
    s = settings(tmp_path)
    on = choose(s, app(True), "jdoe", None, given=False)
    assert on is not None and (on.scope, on.rse, on.dataset) == ("user.jdoe", "A", None)
    assert choose(s, app(False), "jdoe", None, given=False) is None
    assert choose(s, app(True), "jdoe", None, given=True) is None  # an explicit null: off
    off_server = Settings(data_dir=tmp_path)
    assert choose(off_server, app(True), "jdoe", None, given=False) is None


def test_each_bad_choice_names_its_field(tmp_path: Path) -> None:
    s = settings(tmp_path, datalake_rses=["A", "B"])
    cases = [
        (s, DatalakeRequest(rse="C"), "datalake.rse"),
        (s, DatalakeRequest(dataset="a:b"), "datalake.dataset"),
        (s, DatalakeRequest(dataset="x" * 251), "datalake.dataset"),
        (Settings(data_dir=tmp_path), DatalakeRequest(), "datalake"),
    ]
    for chosen_settings, wish, field in cases:
        with pytest.raises(Invalid) as refused:
            choose(chosen_settings, app(False), "jdoe", wish, given=True)
        assert [p[1] for p in refused.value.problems] == [field]
    chosen = choose(s, app(False), "jdoe", DatalakeRequest(rse="B", dataset="x" * 250), given=True)
    assert chosen is not None and chosen.did == f"user.jdoe:{'x' * 250}"


def test_the_scope_follows_the_operators_template(tmp_path: Path) -> None:
    vo = choose(settings(tmp_path, datalake_scope="cta"), app(True), "jdoe", None, given=False)
    assert vo is not None and vo.scope == "cta"
    with pytest.raises(Invalid, match="cannot name a Rucio scope"):
        choose(settings(tmp_path), app(True), "a" * 30, None, given=False)


def test_file_names_are_unique_per_job_and_keep_no_slash() -> None:
    uuid = "0f1e2d3c-aaaa-bbbb-cccc-000000000000"
    assert file_name("sim", 12, 3, uuid, "data/run7.dat") == "sim.12.3.0f1e2d3c.data_run7.dat"
    assert file_name("sim", 12, 3, uuid, "run7.dat", attempt=2) == "sim.12.3r2.0f1e2d3c.run7.dat"
    # Another installation's submission 12, job 3: another job uuid, another name.
    other = "9a8b7c6d-aaaa-bbbb-cccc-000000000000"
    assert file_name("sim", 12, 3, uuid, "run7.dat") != file_name("sim", 12, 3, other, "run7.dat")
