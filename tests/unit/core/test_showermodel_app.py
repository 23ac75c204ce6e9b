"""The showermodel application: its definition, its batches and its job script's pure helpers."""

from __future__ import annotations

import fnmatch
import importlib.util
import math
import statistics
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from pydantic import ValidationError

from concordia.core.application import ApplicationDef, expand_batch, validate_parameters
from concordia.core.parameters import EnumParam, ParameterErrors
from concordia.logic.applications import ApplicationCatalog
from concordia.settings import SHIPPED_APPLICATIONS

YAML = Path(SHIPPED_APPLICATIONS) / "showermodel.yaml"
SCRIPT = Path(SHIPPED_APPLICATIONS) / "showermodel" / "run_showers.py"


@pytest.fixture(scope="module")
def app() -> ApplicationDef:
    return ApplicationDef.model_validate(yaml.safe_load(YAML.read_text()))


@pytest.fixture(scope="module")
def script() -> ModuleType:
    """The job script loaded as a module; the scientific packages stay unimported."""
    heavy = ("showermodel", "numpy", "matplotlib", "pandas")
    already = {name for name in heavy if name in sys.modules}
    spec = importlib.util.spec_from_file_location("showermodel_run_showers", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    assert {name for name in heavy if name in sys.modules} == already
    return module


def test_the_definition_loads_and_its_catalogue_accepts_it(app: ApplicationDef) -> None:
    assert app.name == YAML.stem == "showermodel"
    assert app.vos == ["cta"]
    assert app.image is not None
    assert app.image.base == "debian:bookworm"
    assert app.image.variant == "minbase"
    assert app.image.pip == ["ShowerModel==0.1.9"]  # pinned: the image must rebuild the same
    assert {"python3-pip", "python3-numpy", "ca-certificates"} <= set(app.image.packages)
    assert app.image.env["MPLBACKEND"] == "Agg"
    catalog = ApplicationCatalog(Path(SHIPPED_APPLICATIONS)).load()
    assert "showermodel.yaml" not in catalog.errors
    assert catalog.get("showermodel") == app
    assert catalog.input_paths(app) == [SCRIPT]


def test_each_job_of_a_batch_gets_its_own_run(app: ApplicationDef) -> None:
    values = validate_parameters(app, {"jobs": "3", "first_run": 41, "layout": "grid-9"})
    plans = expand_batch(app, values)
    assert [p.values["run"] for p in plans] == [41, 42, 43]
    assert [p.name for p in plans] == ["showermodel_41", "showermodel_42", "showermodel_43"]
    for plan, run in zip(plans, (41, 42, 43), strict=True):
        assert plan.argv[:2] == ["python3", SCRIPT.name]  # the sandbox copies it by base name
        assert plan.argv[plan.argv.index("--run") + 1] == str(run)
        assert plan.argv.count("--run") == 1
        assert plan.argv[plan.argv.index("--layout") + 1] == "grid-9"


def test_the_default_command_is_what_the_script_expects(
    app: ApplicationDef, script: ModuleType
) -> None:
    (plan,) = expand_batch(app, validate_parameters(app, {}))
    args = script.parse_args(plan.argv[2:])
    assert args.run == 1
    assert (args.showers, args.primary, args.layout) == (10, "gamma", "square-4")
    assert (args.energy_min, args.energy_max, args.zenith) == (0.1, 10.0, 20.0)
    assert args.core_radius == 300.0
    # The form offers exactly the choices the script knows.
    layout, primary = app.parameters["layout"], app.parameters["primary"]
    assert isinstance(layout, EnumParam) and isinstance(primary, EnumParam)
    assert layout.choices == list(script.LAYOUTS)
    assert primary.choices == sorted(script.PROFILE_MODELS)
    # No photon file unless asked: existing runs write what they wrote.
    assert args.photon_file == "none"
    photon_file = app.parameters["photon_file"]
    assert isinstance(photon_file, EnumParam)
    assert photon_file.choices == list(script.PHOTON_FILES)


def test_the_photon_file_is_asked_for_on_the_command_line(
    app: ApplicationDef, script: ModuleType
) -> None:
    values = validate_parameters(app, {"photon_file": "arrival-times", "first_run": 5})
    (plan,) = expand_batch(app, values)
    assert script.parse_args(plan.argv[2:]).photon_file == "arrival-times"
    with pytest.raises(ParameterErrors) as info:
        validate_parameters(app, {"photon_file": "hdf5"})
    assert [e.field for e in info.value.errors] == ["photon_file"]
    # Its histograms cost a little CPU per shower and telescope: the estimate counts it.
    big = {"showers": 700, "layout": "grid-25", "primary": "proton"}
    without = app.cpu_seconds(validate_parameters(app, big))
    with_photons = app.cpu_seconds(
        validate_parameters(app, {**big, "photon_file": "arrival-times"})
    )
    assert without == pytest.approx(530)
    assert with_photons == pytest.approx(5 + 700 * (0.75 + 0.038))


def test_the_outputs_cover_what_the_script_writes(app: ApplicationDef) -> None:
    written = ["showers_run7.csv", "profile_run7.png", "signal_run7.png", "photons_run7.npy"]
    for name in written:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in app.outputs), name
    # Only the photon file is data for the data lake.
    assert app.datalake is not None
    data = [n for n in written if any(fnmatch.fnmatch(n, g) for g in app.datalake.data)]
    assert data == ["photons_run7.npy"]
    assert not any(fnmatch.fnmatch("run_showers.py", pattern) for pattern in app.outputs)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"layout": "hexagon-7"}, "layout"),
        ({"primary": "iron"}, "primary"),
        ({"energy_min": 0}, "energy_min"),
        ({"energy_max": 5000}, "energy_max"),
        ({"energy_min": "nan"}, "energy_min"),
        ({"zenith": 75}, "zenith"),
        ({"jobs": 0}, "jobs"),
        ({"jobs": 1001}, "jobs"),
        ({"showers": 0}, "showers"),
        ({"first_run": -1}, "first_run"),
        ({"core_radius": -5}, "core_radius"),
    ],
)
def test_the_definition_refuses_bad_values(
    app: ApplicationDef, raw: dict[str, object], field: str
) -> None:
    with pytest.raises(ParameterErrors) as info:
        validate_parameters(app, raw)
    assert [e.field for e in info.value.errors] == [field]


def test_the_script_refuses_an_inverted_energy_range(
    app: ApplicationDef, script: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    # The definition's rule refuses the pair before any job (tests/unit/core/test_rules.py); the
    # script checks it again for a run by hand.
    values = {**validate_parameters(app, {}), "energy_min": 50.0, "energy_max": 5.0}
    (plan,) = expand_batch(app, values)
    with pytest.raises(SystemExit) as info:
        script.parse_args(plan.argv[2:])
    assert info.value.code == 2
    assert "--energy-min (50.0 TeV) is above --energy-max (5.0 TeV)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--showers", "3"],  # no run
        ["--run", "-1"],
        ["--run", "1", "--layout", "ring-3"],
        ["--run", "1", "--zenith", "61"],
        ["--run", "1", "--energy-max", "nan"],
        ["--run", "1", "--showers", "0"],
    ],
)
def test_the_script_refuses_bad_arguments(script: ModuleType, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        script.parse_args(argv)
    assert info.value.code == 2


def test_a_definition_cannot_widen_the_layouts_by_mistake() -> None:
    definition = yaml.safe_load(YAML.read_text())
    definition["parameters"]["layout"]["default"] = "grid-100"
    with pytest.raises(ValidationError, match="layout: must be one of"):
        ApplicationDef.model_validate(definition)


@pytest.mark.parametrize(("layout", "count"), [("square-4", 4), ("grid-9", 9), ("grid-25", 25)])
def test_layouts_are_centred_square_grids(script: ModuleType, layout: str, count: int) -> None:
    positions = script.layout_positions(layout)
    assert len(positions) == count == len(set(positions))
    assert math.isclose(sum(x for x, _ in positions), 0, abs_tol=1e-12)
    assert math.isclose(sum(y for _, y in positions), 0, abs_tol=1e-12)
    nearest = min(math.dist(a, b) for i, a in enumerate(positions) for b in positions[i + 1 :])
    assert math.isclose(nearest, 0.2)  # km
    side = math.isqrt(count)
    assert positions[0][1] == max(y for _, y in positions)  # row by row from the north
    assert [x for x, _ in positions[:side]] == sorted(x for x, _ in positions[:side])


def test_the_square_layout_in_km(script: ModuleType) -> None:
    expected = [(-0.1, 0.1), (0.1, 0.1), (-0.1, -0.1), (0.1, -0.1)]
    for got, want in zip(script.layout_positions("square-4"), expected, strict=True):
        assert got == pytest.approx(want)


def test_an_unknown_layout_is_named_in_the_error(script: ModuleType) -> None:
    with pytest.raises(ValueError, match="unknown layout 'hex-7'; choose one of square-4"):
        script.layout_positions("hex-7")


def test_the_seed_depends_on_the_run_only(script: ModuleType) -> None:
    seeds = [script.derive_seed(run) for run in range(1000)]
    assert seeds == [script.derive_seed(run) for run in range(1000)]
    assert len(set(seeds)) == 1000
    assert all(0 <= seed < 2**63 for seed in seeds)
    assert script.derive_seed(1) == 1342314020940639727  # pinned: old runs stay repeatable
    with pytest.raises(ValueError, match="run must be >= 0"):
        script.derive_seed(-1)


def test_sampling_is_repeatable_and_in_range(script: ModuleType) -> None:
    seed = script.derive_seed(12)
    specs = script.sample_showers(seed, 2000, 0.1, 100.0, 0.3)
    assert specs == script.sample_showers(seed, 2000, 0.1, 100.0, 0.3)
    assert specs != script.sample_showers(script.derive_seed(13), 2000, 0.1, 100.0, 0.3)
    assert [s.index for s in specs] == list(range(2000))
    assert all(0.1 <= s.energy_tev <= 100.0 for s in specs)
    assert all(math.hypot(s.core_x_km, s.core_y_km) <= 0.3 for s in specs)
    # Log-uniform: log10(E) is uniform on [-1, 2], so its mean is 0.5 and a third of
    # the showers lie in each decade.
    logs = [math.log10(s.energy_tev) for s in specs]
    assert statistics.fmean(logs) == pytest.approx(0.5, abs=0.08)
    assert sum(log < 0 for log in logs) / len(logs) == pytest.approx(1 / 3, abs=0.04)
    # Uniform per unit area: half the cores lie within radius / sqrt(2).
    inner = sum(math.hypot(s.core_x_km, s.core_y_km) < 0.3 / math.sqrt(2) for s in specs)
    assert inner / len(specs) == pytest.approx(0.5, abs=0.04)


def test_a_single_energy_and_a_point_core(script: ModuleType) -> None:
    specs = script.sample_showers(5, 3, 2.0, 2.0, 0.0)
    assert [(s.energy_tev, s.core_x_km, s.core_y_km) for s in specs] == [(2.0, 0.0, 0.0)] * 3
