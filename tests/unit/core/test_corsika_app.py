"""The corsika application: its definition and recipe, its batches, the steering cards its job
script writes, and both scripts run against a stand-in CORSIKA (CI has no CORSIKA)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from concordia.core.application import ApplicationDef, expand_batch, validate_parameters
from concordia.core.parameters import EnumParam, ParameterError, ParameterErrors, check_value
from concordia.core.recipe import image_id
from concordia.logic.applications import ApplicationCatalog
from concordia.settings import SHIPPED_APPLICATIONS

YAML = Path(SHIPPED_APPLICATIONS) / "corsika.yaml"
JOB_SCRIPT = Path(SHIPPED_APPLICATIONS) / "corsika" / "corsika_job.py"
BUILD_SCRIPT = Path(SHIPPED_APPLICATIONS) / "corsika" / "build-corsika.sh"
BUILD_DEST = "/opt/corsika-build/build-corsika.sh"
DEFAULT_BUILD = {"he_model": "qgsjet-ii-04", "le_model": "urqmd"}

#: A stand-in for the CORSIKA executable: reads the card on stdin, writes the TELFIL file
#: (zstd-framed unless FAKE_PLAIN is set), and ends like CORSIKA unless told otherwise.
FAKE_CORSIKA = r"""#!/bin/sh
telfil=
while read -r key value rest; do
    if [ "$key" = TELFIL ]; then telfil=$value; fi
done
echo " CORSIKA stand-in read its card"
if [ -n "${FAKE_EXIT:-}" ]; then exit "$FAKE_EXIT"; fi
if [ -n "${FAKE_PLAIN:-}" ]; then printf 'eventio' > "$telfil"
else printf '\050\265\057\375eventio' > "$telfil"; fi
if [ -z "${FAKE_NO_END:-}" ]; then echo " ========== END OF RUN =========="; fi
"""


@pytest.fixture(scope="module")
def app() -> ApplicationDef:
    return ApplicationDef.model_validate(yaml.safe_load(YAML.read_text()))


@pytest.fixture(scope="module")
def job() -> ModuleType:
    """The job script, loaded from its path as the platform ships it (no package)."""
    spec = importlib.util.spec_from_file_location("corsika_job", JOB_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def card_lines(card: str, keyword: str) -> list[list[str]]:
    """The values of every line of a steering card that starts with the keyword."""
    return [line.split()[1:] for line in card.splitlines() if line.split()[:1] == [keyword]]


def card_value(card: str, keyword: str) -> list[str]:
    (values,) = card_lines(card, keyword)
    return values


# ---- the definition and its recipe --------------------------------------------------------


def test_the_definition_loads_and_the_catalogue_accepts_it(app: ApplicationDef) -> None:
    assert app.name == YAML.stem == "corsika"
    assert app.input_files == ["corsika/corsika_job.py"]
    assert JOB_SCRIPT.is_file()
    assert app.cpu_time == 129600
    assert app.batch.count == "jobs"
    assert app.batch.sequences == {"run": "first_run"}
    catalog = ApplicationCatalog(Path(SHIPPED_APPLICATIONS)).load()
    assert "corsika.yaml" not in catalog.errors
    assert catalog.get("corsika") == app


def test_the_recipe_builds_corsika_from_the_operators_source(app: ApplicationDef) -> None:
    recipe = app.image
    assert recipe is not None
    assert (recipe.base, recipe.variant) == ("debian:bookworm", "minbase")
    assert {"gfortran", "gcc", "g++", "make", "python3", "zstd"} <= set(recipe.packages)
    assert recipe.files == {"corsika/build-corsika.sh": BUILD_DEST}
    assert (YAML.parent / "corsika" / "build-corsika.sh").is_file()
    source = recipe.sources["corsika"]
    assert source.dest == "/build/corsika.tar.gz"
    assert "registered" in source.help and "sha256" in source.help
    assert recipe.placeholders() == {"he_model", "le_model"}
    assert recipe.rendered_steps(DEFAULT_BUILD) == [f"sh {BUILD_DEST} qgsjet-ii-04 urqmd"]
    env = recipe.rendered_env({"he_model": "epos-lhc", "le_model": "gheisha"})
    assert env["CORSIKA_BIN"] == "/opt/corsika/bin/corsika"
    assert env["CORSIKA_DATA"] == "/opt/corsika/data"
    assert (env["CORSIKA_HE_MODEL"], env["CORSIKA_LE_MODEL"]) == ("epos-lhc", "gheisha")


def test_the_build_arguments_offer_the_cta_models(app: ApplicationDef) -> None:
    he, le = app.build_args["he_model"], app.build_args["le_model"]
    assert isinstance(he, EnumParam) and isinstance(le, EnumParam)
    assert he.choices == ["qgsjet-ii-04", "epos-lhc", "sibyll-2.3d"]
    assert le.choices == ["urqmd", "gheisha", "fluka"]
    assert {"he_model": he.default, "le_model": le.default} == DEFAULT_BUILD
    assert "FLUKA" in le.help and "separately" in le.help
    with pytest.raises(ParameterError, match="must be one of"):
        check_value("he_model", he, "qgsjet-01")
    # The build script accepts exactly the recipe's choices (and refuses others, see below).
    script = BUILD_SCRIPT.read_text()
    for choice in [*he.choices, *le.choices]:
        assert f"    {choice})" in script


def test_the_form_offers_exactly_what_the_job_script_knows(
    app: ApplicationDef, job: ModuleType
) -> None:
    def choices(name: str) -> list[str]:
        spec = app.parameters[name]
        assert isinstance(spec, EnumParam)
        return spec.choices

    assert set(choices("site")) == set(job.SITES)
    assert choices("particle") == list(job.PARTICLES)
    assert [int(z) for z in choices("zenith")] == sorted(job.ZENITHS)
    assert set(choices("pointing")) == set(job.POINTINGS)
    assert set(choices("layout")) == set(job.LAYOUTS)
    showers, first_run = app.parameters["showers"], app.parameters["first_run"]
    assert showers.max == job.MAX_SHOWERS  # type: ignore[union-attr]
    assert first_run.max == job.MAX_RUN  # type: ignore[union-attr]


# ---- batches ------------------------------------------------------------------------------


def test_a_batch_numbers_its_runs_from_first_run(app: ApplicationDef, job: ModuleType) -> None:
    raw = {"jobs": "4", "first_run": 1000, "site": "LaPalma", "particle": "proton"}
    values = validate_parameters(app, raw)
    assert values["zenith"] == "20" and values["layout"] == "lst"  # the defaults
    plans = expand_batch(app, values)
    assert [p.values["run"] for p in plans] == [1000, 1001, 1002, 1003]
    assert [p.name for p in plans] == [f"corsika_LaPalma_proton_{run}" for run in range(1000, 1004)]
    for plan in plans:
        assert plan.argv[:2] == ["python3", "corsika_job.py"]
        args = job.build_parser().parse_args(plan.argv[2:])
        assert args.run == plan.values["run"]
        assert (args.site, args.particle, args.zenith) == ("LaPalma", "proton", 20)
        assert (args.pointing, args.showers, args.layout) == ("North", 1000, "lst")


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"site": "Chile"}, "site"),
        ({"particle": "iron"}, "particle"),
        ({"zenith": "30"}, "zenith"),
        ({"pointing": "East"}, "pointing"),
        ({"layout": "alpha"}, "layout"),
        ({"showers": 0}, "showers"),
        ({"showers": 25001}, "showers"),
        ({"jobs": 0}, "jobs"),
        ({"jobs": 10001}, "jobs"),
        ({"first_run": 0}, "first_run"),
        ({"first_run": 1_000_000}, "first_run"),
        ({"first_run": "one"}, "first_run"),
        ({"seed": 1}, "seed"),
    ],
)
def test_bad_values_are_refused(app: ApplicationDef, raw: dict[str, Any], field: str) -> None:
    with pytest.raises(ParameterErrors) as caught:
        validate_parameters(app, raw)
    assert [e.field for e in caught.value.errors] == [field]


# ---- steering cards -----------------------------------------------------------------------


def test_a_point_like_gamma_card_from_paranal(job: ModuleType) -> None:
    card = job.make_input_card(
        run=7,
        site="Paranal",
        particle="gamma",
        zenith=20,
        pointing="North",
        showers=500,
        layout="lst",
    )
    assert card_value(card, "RUNNR") == ["7"]
    assert card_value(card, "EVTNR") == ["1"]
    assert card_value(card, "NSHOW") == ["500"]
    assert card_value(card, "PRMPAR") == ["1"]
    assert card_value(card, "ESLOPE") == ["-2.0"]
    assert card_value(card, "ERANGE") == ["3.0", "330000.0"]
    assert card_value(card, "THETAP") == ["20.0", "20.0"]
    # From the North: momentum towards the South, turned by ARRANG (the declination).
    assert card_value(card, "PHIP") == ["175.467", "175.467"]
    assert card_value(card, "VIEWCONE") == ["0.0", "0.0"]
    assert card_value(card, "CSCAT") == ["10", "250000.0", "0.0"]
    assert card_value(card, "OBSLEV") == ["214700.0"]
    assert card_value(card, "ATMOSPHERE") == ["26", "Y"]
    assert card_value(card, "MAGNET") == ["20.552", "-9.367"]
    assert card_value(card, "ARRANG") == ["-4.5330"]
    assert card_lines(card, "TELESCOPE") == [
        ["-2064.3", "-6481.7", "3430.0", "1250.0"],
        ["7999.4", "-76.8", "2940.0", "1250.0"],
        ["-1939.6", "6520.0", "3100.0", "1250.0"],
        ["-12003.3", "115.1", "3310.0", "1250.0"],
    ]
    assert card_value(card, "TELFIL") == ["run000007_gamma_za20_azm000_Paranal_lst.corsika.zst"]
    assert card_value(card, "DATDIR") == ["/opt/corsika/data/"]
    assert card_value(card, "CWAVLG") == ["240.", "1000."]
    assert len(card_lines(card, "SEED")) == 4
    assert card.splitlines()[-1] == "EXIT"


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {"site": "LaPalma", "particle": "proton", "zenith": 40, "pointing": "South"},
            {
                "PRMPAR": ["14"],
                "ERANGE": ["8.0", "1200000.0"],
                "THETAP": ["40.0", "40.0"],
                "PHIP": ["355.683", "355.683"],
                "VIEWCONE": ["0.0", "10.0"],
                "CSCAT": ["20", "330000.0", "0.0"],
                "OBSLEV": ["215800.0"],
                "ATMOSPHERE": ["36", "Y"],
                "MAGNET": ["30.909", "23.409"],
            },
        ),
        (
            {"site": "Paranal", "particle": "gamma-diffuse", "zenith": 60, "pointing": "South"},
            {
                "PRMPAR": ["1"],
                "ERANGE": ["15.0", "1650000.0"],
                "THETAP": ["60.0", "60.0"],
                "PHIP": ["355.467", "355.467"],
                "VIEWCONE": ["0.0", "10.0"],
                "CSCAT": ["20", "420000.0", "0.0"],
            },
        ),
        (
            {"site": "LaPalma", "particle": "electron", "zenith": 20, "pointing": "North"},
            {"PRMPAR": ["3"], "ERANGE": ["3.0", "330000.0"], "PHIP": ["175.683", "175.683"]},
        ),
        (
            {"site": "Paranal", "particle": "helium", "zenith": 20, "pointing": "North"},
            {"PRMPAR": ["402"], "ERANGE": ["10.0", "1200000.0"], "VIEWCONE": ["0.0", "10.0"]},
        ),
    ],
)
def test_cards_follow_site_particle_zenith_and_pointing(
    job: ModuleType, kwargs: dict[str, Any], expected: dict[str, list[str]]
) -> None:
    card = job.make_input_card(run=42, showers=2000, layout="single-mst", **kwargs)
    assert card_value(card, "RUNNR") == ["42"]
    assert card_value(card, "NSHOW") == ["2000"]
    for keyword, values in expected.items():
        assert card_value(card, keyword) == values, keyword


@pytest.mark.parametrize(
    ("site", "layout", "count", "first"),
    [
        ("LaPalma", "baseline", 19, ["-7093.0", "-5207.0", "4300.0", "1250.0"]),
        ("Paranal", "baseline", 99, ["-2064.3", "-6481.7", "3430.0", "1250.0"]),
        ("LaPalma", "lst", 4, ["-7093.0", "-5207.0", "4300.0", "1250.0"]),
        ("LaPalma", "single-mst", 1, ["0.0", "0.0", "2900.0", "960.0"]),
        ("Paranal", "single-mst", 1, ["-1.7", "-0.1", "2435.0", "960.0"]),
    ],
)
def test_layouts_write_one_telescope_line_each(
    job: ModuleType, site: str, layout: str, count: int, first: list[str]
) -> None:
    card = job.make_input_card(
        run=1, site=site, particle="gamma", zenith=20, pointing="North", showers=1, layout=layout
    )
    telescopes = card_lines(card, "TELESCOPE")
    assert len(telescopes) == count
    assert telescopes[0] == first
    radii = {values[3] for values in telescopes}
    assert radii <= {"1250.0", "960.0", "300.0"}  # LST, MST, SST spheres
    if (site, layout) == ("Paranal", "baseline"):
        assert sorted(radii) == ["1250.0", "300.0", "960.0"]


def test_seeds_are_four_valid_and_fixed_by_the_run_number(job: ModuleType) -> None:
    def seeds(card: str) -> list[int]:
        lines = card_lines(card, "SEED")
        assert all(values[1:] == ["0", "0"] for values in lines)
        return [int(values[0]) for values in lines]

    def card(run: int, **kwargs: Any) -> str:
        params = {"site": "Paranal", "particle": "gamma", "zenith": 20, "pointing": "North"}
        params.update(kwargs)
        text: str = job.make_input_card(run=run, showers=10, layout="lst", **params)
        return text

    first = seeds(card(1))
    assert len(first) == 4 and len(set(first)) == 4
    assert all(1 <= seed <= 900_000_000 for seed in first)
    assert seeds(card(1)) == first  # the same run repeats exactly
    assert seeds(card(1, site="LaPalma", particle="proton")) == first  # by the run alone
    assert seeds(card(2)) != first
    every = [tuple(job.run_seeds(run)) for run in range(1, 2001)]
    assert len(set(every)) == len(every)
    assert all(1 <= s <= 900_000_000 and len(set(run)) == 4 for run in every for s in run)
    assert job.run_seeds(999_999) != job.run_seeds(999_998)


def test_cards_are_deterministic_and_fit_in_80_columns(job: ModuleType) -> None:
    for site in job.SITES:
        kwargs = {"run": 999_999, "site": site, "particle": "gamma-diffuse", "zenith": 60}
        kwargs |= {"pointing": "South", "showers": 25_000, "layout": "baseline"}
        card = job.make_input_card(**kwargs)
        assert card == job.make_input_card(**kwargs)
        assert max(len(line) for line in card.splitlines()) <= 80
        keywords = [line.split()[0] for line in card.splitlines() if line.strip()]
        assert keywords.count("EXIT") == 1 and keywords[-1] == "EXIT"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"run": 0}, "run number"),
        ({"run": 1_000_000}, "run number"),
        ({"site": "Chile"}, "unknown site"),
        ({"particle": "iron"}, "unknown particle"),
        ({"zenith": 30}, "unknown zenith"),
        ({"pointing": "East"}, "unknown pointing"),
        ({"showers": 0}, "showers"),
        ({"layout": "alpha"}, "unknown layout"),
    ],
)
def test_the_card_refuses_bad_values(job: ModuleType, change: dict[str, Any], message: str) -> None:
    kwargs: dict[str, Any] = {"run": 1, "site": "Paranal", "particle": "gamma", "zenith": 20}
    kwargs |= {"pointing": "North", "showers": 10, "layout": "lst"} | change
    with pytest.raises(ValueError, match=message):
        job.make_input_card(**kwargs)


# ---- the image's content id ---------------------------------------------------------------


def test_the_image_id_follows_the_models_and_the_build_script(app: ApplicationDef) -> None:
    recipe = app.image
    assert recipe is not None
    digests = {BUILD_DEST: hashlib.sha256(BUILD_SCRIPT.read_bytes()).hexdigest()}
    builder = "mmdebstrap 1.3.5"
    reference = image_id(recipe, DEFAULT_BUILD, digests, builder)
    assert image_id(recipe, dict(DEFAULT_BUILD), dict(digests), builder) == reference
    assert image_id(recipe, dict(reversed(DEFAULT_BUILD.items())), digests, builder) == reference
    others = {
        image_id(recipe, {**DEFAULT_BUILD, "he_model": "epos-lhc"}, digests, builder),
        image_id(recipe, {**DEFAULT_BUILD, "he_model": "sibyll-2.3d"}, digests, builder),
        image_id(recipe, {**DEFAULT_BUILD, "le_model": "gheisha"}, digests, builder),
        image_id(recipe, {**DEFAULT_BUILD, "le_model": "fluka"}, digests, builder),
        image_id(recipe, DEFAULT_BUILD, {BUILD_DEST: "0" * 64}, builder),
        image_id(recipe, DEFAULT_BUILD, digests, "mmdebstrap 1.4.0"),
    }
    assert reference not in others and len(others) == 6


# ---- the job script against a stand-in CORSIKA ---------------------------------------------


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A stand-in CORSIKA and data directory; the job runs in its own work directory."""
    binary = tmp_path / "bin" / "corsika"
    binary.parent.mkdir()
    binary.write_text(FAKE_CORSIKA)
    binary.chmod(0o755)
    data = tmp_path / "data"
    data.mkdir()
    for number in (26, 36):
        (data / f"atmprof{number}.dat").write_text("# profile\n")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for name in ("FAKE_EXIT", "FAKE_PLAIN", "FAKE_NO_END"):
        monkeypatch.delenv(name, raising=False)
    return {"binary": binary, "data": data, "work": work}


def job_argv(stand_in: dict[str, Path], *extra: str) -> list[str]:
    return [
        "--run", "12", "--site", "LaPalma", "--particle", "gamma", "--zenith", "20",
        "--pointing", "North", "--showers", "5", "--layout", "lst",
        "--corsika", str(stand_in["binary"]), "--data-dir", str(stand_in["data"]), *extra,
    ]  # fmt: skip


OUTPUT = "run000012_gamma_za20_azm000_LaPalma_lst.corsika.zst"


def test_the_job_writes_the_card_runs_corsika_and_keeps_its_log(
    job: ModuleType, stand_in: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert job.main(job_argv(stand_in)) == 0
    work = stand_in["work"]
    card = (work / "run000012.input").read_text()
    assert card_value(card, "RUNNR") == ["12"]
    assert card_value(card, "DATDIR") == [f"{stand_in['data']}/"]
    assert (work / OUTPUT).read_bytes().startswith(b"\x28\xb5\x2f\xfd")
    log = (work / "run000012.corsika.log").read_text()
    assert "END OF RUN" in log
    assert (work / "atmprof36.dat").resolve() == stand_in["data"] / "atmprof36.dat"
    out = capsys.readouterr().out
    assert "END OF RUN" in out and f"run 12 done: {OUTPUT}" in out


def test_the_outputs_match_the_applications_globs(
    app: ApplicationDef, job: ModuleType, stand_in: dict[str, Path]
) -> None:
    assert job.main(job_argv(stand_in)) == 0
    kept = {p.name for pattern in app.outputs for p in stand_in["work"].glob(pattern)}
    assert kept == {OUTPUT, "run000012.input", "run000012.corsika.log"}


def test_an_uncompressed_photon_file_is_kept_under_a_plain_name(
    job: ModuleType, stand_in: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_PLAIN", "1")
    assert job.main(job_argv(stand_in)) == 0
    assert not (stand_in["work"] / OUTPUT).exists()
    assert (stand_in["work"] / OUTPUT.removesuffix(".zst")).read_bytes() == b"eventio"


def test_the_job_fails_clearly_without_corsika(
    job: ModuleType, stand_in: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = job_argv(stand_in, "--corsika", str(stand_in["work"] / "nowhere" / "corsika"))
    assert job.main(argv) == 1
    assert "no CORSIKA executable at" in capsys.readouterr().err
    assert (stand_in["work"] / "run000012.input").is_file()  # the card is there to inspect


@pytest.mark.parametrize(
    ("env", "code", "message"),
    [
        ({"FAKE_EXIT": "3"}, 3, "CORSIKA exited with code 3"),
        ({"FAKE_NO_END": "1"}, 1, "no END OF RUN"),
    ],
)
def test_the_job_fails_when_corsika_does(
    job: ModuleType,
    stand_in: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    code: int,
    message: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert job.main(job_argv(stand_in)) == code
    assert message in capsys.readouterr().err


def test_the_job_fails_clearly_without_the_sites_atmosphere(
    job: ModuleType, stand_in: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    (stand_in["data"] / "atmprof36.dat").unlink()
    assert job.main(job_argv(stand_in)) == 1
    assert "atmprof36.dat for LaPalma is not in" in capsys.readouterr().err


def test_the_command_line_refuses_bad_values(
    job: ModuleType, stand_in: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = job_argv(stand_in)
    argv[argv.index("--run") + 1] = "1000000"
    with pytest.raises(SystemExit) as caught:
        job.main(argv)
    assert caught.value.code == 2
    assert "argument --run: 1000000 is outside 1 .. 999999" in capsys.readouterr().err


# ---- the build script ---------------------------------------------------------------------


def test_the_build_script_is_valid_shell() -> None:
    subprocess.run(["sh", "-n", str(BUILD_SCRIPT)], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", "-s", "sh", str(BUILD_SCRIPT)], check=True)


def run_build(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        **os.environ,
        "CORSIKA_SOURCE": str(tmp_path / "corsika.tar.gz"),
        "CORSIKA_PREFIX": str(tmp_path / "opt" / "corsika"),
        "FLUKA_PREFIX": str(tmp_path / "opt" / "fluka"),
        "TMPDIR": str(tmp_path),
        **env,
    }
    environ.pop("FLUPRO", None)
    return subprocess.run(
        ["sh", str(BUILD_SCRIPT), *args], env=environ, capture_output=True, text=True, timeout=60
    )


def fake_source(tmp_path: Path, profiles: tuple[str, ...] = ("26", "36")) -> Path:
    """A CORSIKA tarball whose configure and make only pretend, and whose 'binary' is the
    stand-in; with stub compilers on PATH the whole build script runs in a second."""
    tree = tmp_path / "tree" / "corsika-77550"
    for sub in ("src", "bernlohr", "run"):
        (tree / sub).mkdir(parents=True)
    (tree / "configure").write_text("#!/bin/sh\nPACKAGE_VERSION='77550'\nexit 0\n")
    (tree / "configure").chmod(0o755)
    (tree / "bernlohr" / "iact.c").write_text("/* IACT */\n")
    (tree / "bernlohr" / "atmprof1.dat").write_text("# tropical\n")
    for number in profiles:
        (tree / "bernlohr" / f"atmprof{number}.dat").write_text(f"# profile {number}\n")
    (tree / "run" / "atmprof1.dat").symlink_to("../bernlohr/atmprof1.dat")
    for table in ("EGSDAT6_.4", "NUCNUCCS", "QGSDAT-II-04"):
        (tree / "run" / table).write_text(table)
    (tree / "fake-corsika").write_text(FAKE_CORSIKA)
    tarball = tmp_path / "corsika.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tree, arcname=tree.name)
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    scripts = {
        "gfortran": 'case "$1" in --version) echo "GNU Fortran (stub) 12.2.0";; esac',
        "make": '[ "${1:-}" = install ] && install -m 755 fake-corsika '
        "run/corsika77550Linux_QGSII_urqmd; exit 0",
        "gcc": "exit 0",
        "g++": "exit 0",
        "cpp": "exit 0",
    }
    for name, body in scripts.items():
        (stubs / name).write_text(f"#!/bin/sh\n{body}\n")
        (stubs / name).chmod(0o755)
    return stubs


def test_the_build_script_refuses_unknown_models(tmp_path: Path) -> None:
    result = run_build(tmp_path, "qgsjet-01", "urqmd")
    assert result.returncode == 1
    assert "unknown high-energy model 'qgsjet-01'" in result.stderr
    result = run_build(tmp_path, "epos-lhc", "")
    assert result.returncode == 1
    assert "unknown low-energy model ''" in result.stderr


def test_the_build_script_says_where_the_source_should_be(tmp_path: Path) -> None:
    result = run_build(tmp_path, "qgsjet-ii-04", "urqmd")
    assert result.returncode == 1
    assert f"no CORSIKA source at {tmp_path / 'corsika.tar.gz'}" in result.stderr
    assert "sources.corsika" in result.stderr


def test_the_build_script_explains_that_fluka_is_separate(tmp_path: Path) -> None:
    fake_source(tmp_path)
    result = run_build(tmp_path, "qgsjet-ii-04", "fluka")
    assert result.returncode == 1
    assert "CORSIKA 77550" in result.stdout
    assert "le_model fluka needs FLUKA" in result.stderr and "fluka.cern" in result.stderr
    assert not list(tmp_path.glob("corsika-build.*"))  # the build tree is gone


def test_the_build_script_installs_and_smoke_tests_corsika(tmp_path: Path) -> None:
    stubs = fake_source(tmp_path)
    path = f"{stubs}{os.pathsep}{os.environ['PATH']}"
    result = run_build(tmp_path, "qgsjet-ii-04", "urqmd", PATH=path)
    assert result.returncode == 0, result.stdout + result.stderr
    prefix = tmp_path / "opt" / "corsika"
    assert os.access(prefix / "bin" / "corsika", os.X_OK)
    data = {p.name for p in (prefix / "data").iterdir()}
    assert {"EGSDAT6_.4", "NUCNUCCS", "QGSDAT-II-04", "atmprof26.dat", "atmprof36.dat"} <= data
    assert not (prefix / "data" / "atmprof1.dat").is_symlink()  # copied, not a dangling link
    info = (prefix / "BUILD-INFO").read_text()
    assert "CORSIKA 77550 (corsika77550Linux_QGSII_urqmd)" in info
    assert "QGSJETII" in info and "URQMD" in info and "--enable-IACT" in info
    assert "smoke test" in result.stdout
    assert not (tmp_path / "corsika.tar.gz").exists()  # no CORSIKA source left in the image
    assert not list(tmp_path.glob("corsika-build.*"))


def test_the_build_script_needs_the_cta_atmospheres(tmp_path: Path) -> None:
    stubs = fake_source(tmp_path, profiles=("26",))
    path = f"{stubs}{os.pathsep}{os.environ['PATH']}"
    result = run_build(tmp_path, "qgsjet-ii-04", "urqmd", PATH=path)
    assert result.returncode == 1
    assert "atmprof36.dat (a CTA site atmosphere) is not in the" in result.stderr


def test_the_build_script_takes_ctas_bundle_apart(tmp_path: Path) -> None:
    """CTA's corsika7.7_simtelarray bundle: CORSIKA, a newer IACT/ATMO package (here with a
    top directory) and sim_telarray, whose configuration has the CTA atmospheres."""
    stubs = fake_source(tmp_path, profiles=())
    parts = tmp_path / "parts"
    parts.mkdir()
    (tmp_path / "corsika.tar.gz").rename(parts / "corsika-77550.tar.gz")
    iact = tmp_path / "bernlohr-1.68"
    iact.mkdir()
    (iact / "iact.c").write_text("/* newer IACT */\n")
    with tarfile.open(parts / "bernlohr-1.68.tar.gz", "w:gz") as tar:
        tar.add(iact, arcname=iact.name)
    cta = tmp_path / "sim_telarray" / "cfg" / "CTA"
    cta.mkdir(parents=True)
    for number in (26, 36):
        (cta / f"atmprof{number}.dat").write_text(f"# CTA site profile {number}\n")
    with tarfile.open(parts / "sim_telarray.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "sim_telarray", arcname="sim_telarray")
    with tarfile.open(tmp_path / "corsika.tar.gz", "w:gz") as tar:
        for part in sorted(parts.iterdir()):
            tar.add(part, arcname=part.name)
    path = f"{stubs}{os.pathsep}{os.environ['PATH']}"
    result = run_build(tmp_path, "qgsjet-ii-04", "urqmd", PATH=path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "unpacking corsika-77550.tar.gz from the bundle" in result.stdout
    assert "using the bundle's IACT/ATMO package bernlohr-1.68.tar.gz" in result.stdout
    data = tmp_path / "opt" / "corsika" / "data"
    assert (data / "atmprof36.dat").read_text() == "# CTA site profile 36\n"
