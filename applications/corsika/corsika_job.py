"""One CORSIKA run as CTA simulates it: write the steering card for the run, run CORSIKA on it."""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

# Where the image recipe (corsika.yaml, build-corsika.sh) installs CORSIKA.
DEFAULT_BINARY = "/opt/corsika/bin/corsika"
DEFAULT_DATA_DIR = "/opt/corsika/data"

#: CORSIKA keeps run numbers to six digits (its file names are DAT<nnnnnn>).
MAX_RUN = 999_999
#: Seeds of CORSIKA's random sequences must lie in 1 .. 900 000 000 (User's Guide, SEED).
MAX_SEED = 900_000_000
#: CTA production runs (CTADIRAC) use at most 25 000 showers per job.
MAX_SHOWERS = 25_000

K = TypeVar("K")
V = TypeVar("V")

# ---------------------------------------------------------------------------------------
# Sites. Magnetic field (horizontal BX and vertical BZ, uT) and ARRANG (the declination,
# deg) are the CTAO simulation-model values of 2024-02-01 (prod6). Observation levels are
# the CORSIKA levels of the prod5 layouts, which the telescope heights below refer to.
# Atmospheres are the prod3/prod5 site profiles shipped with sim_telarray and the
# IACT/ATMO package: atmprof26.dat (Paranal average), atmprof36.dat (La Palma average).
# ---------------------------------------------------------------------------------------

# Telescope positions of the CTA prod5 layouts in CORSIKA's frame: x towards geographic
# North, y towards West, z the centre of the telescope's sphere above the observation
# level, all in metres. The first letter gives the type: L(ST), M(ST), S(ST). Source:
# the prod5 position files published in gammasim/telescope-layouts.
_LAPALMA_POSITIONS = """
    L-01 -70.93 -52.07 43.00
    L-02 -35.27 66.14 32.00
    L-03 75.28 50.49 28.70
    L-04 30.91 -64.54 32.00
    M-01 -211.54 5.66 50.3
    M-02 -153.26 169.01 24.0
    M-03 27.07 198.71 12.2
    M-04 175.61 73.06 9.0
    M-05 140. -189.0 29.0
    M-06 -75.63 -189.00 42.2
    M-07 -215.69 -167.36 63.1
    M-08 -99.01 331.60 9.7
    M-09 221.62 -355.25 47.0
    M-10 20.19 -352.46 62.3
    M-11 -197.30 -335.09 77.1
    M-12 -303.75 339.75 22.3
    M-13 -345.89 130.16 58.0
    M-14 -375.89 -78.24 81.6
    M-15 0.00 0.00 29.0
"""

_PARANAL_POSITIONS = """
    L-01 -20.643 -64.817 34.30
    L-02 79.994 -0.768 29.40
    L-03 -19.396 65.200 31.00
    L-04 -120.033 1.151 33.10
    M-01 -0.017 -0.001 24.35
    M-02 -1.468 -151.221 31.00
    M-03 -3.138 -325.245 39.00
    M-04 1.434 151.220 25.00
    M-05 3.104 325.243 23.50
    M-06 156.493 237.052 24.00
    M-07 147.428 74.202 21.00
    M-08 145.977 -77.019 26.00
    M-09 151.915 -240.013 30.00
    M-10 -151.949 240.011 27.00
    M-11 -146.011 77.017 28.00
    M-12 -147.462 -74.203 28.00
    M-13 -156.527 -237.053 38.50
    M-14 295.343 447.467 25.00
    M-15 317.086 159.593 18.50
    M-16 308.425 -2.960 19.50
    M-17 313.965 -165.650 22.50
    M-18 286.702 -453.054 38.50
    M-19 -286.835 453.054 17.00
    M-20 -313.599 165.646 30.50
    M-21 -308.459 2.959 29.50
    M-22 -316.720 -159.598 35.00
    M-23 -295.477 -447.468 52.00
    M-24 582.262 -5.588 13.50
    M-25 -582.296 5.587 36.00
    S-01 207.036 156.949 14.25
    S-02 203.986 -160.894 19.75
    S-03 -204.020 160.893 22.25
    S-04 -207.070 -156.950 28.25
    S-05 168.882 423.275 18.25
    S-06 160.729 -426.440 33.25
    S-07 -160.762 426.438 10.25
    S-08 -168.916 -423.277 42.25
    S-09 4.972 519.869 11.75
    S-10 -5.006 -519.871 41.25
    S-11 395.510 399.996 11.25
    S-12 387.762 -407.513 28.25
    S-13 -387.795 407.512 13.25
    S-14 -395.545 -399.997 50.25
    S-15 495.605 105.269 9.25
    S-16 493.494 -114.761 11.75
    S-17 -493.528 114.760 28.25
    S-18 -495.640 -105.269 30.25
    S-19 6.927 723.596 11.75
    S-20 -6.961 -723.599 59.75
    S-21 621.223 312.711 7.25
    S-22 615.114 -324.075 19.25
    S-23 -615.142 324.575 19.75
    S-24 -621.259 -312.711 49.25
    S-25 441.802 669.112 30.25
    S-26 428.882 -677.470 47.25
    S-27 -428.914 677.467 7.25
    S-28 -441.838 -669.114 70.25
    S-29 820.094 -7.869 4.25
    S-30 -820.128 7.870 30.75
    S-31 228.460 794.887 25.25
    S-32 213.165 -799.128 56.25
    S-33 -213.198 799.125 10.25
    S-34 -228.495 -794.890 68.25
    S-35 9.046 944.425 27.25
    S-36 -9.080 -944.430 75.25
    S-37 668.034 562.918 13.25
    S-38 657.111 -575.635 43.25
    S-39 -657.142 575.635 8.25
    S-40 -668.070 -562.919 66.25
    S-41 885.687 219.253 6.25
    S-42 881.318 -236.208 9.25
    S-43 -881.350 236.210 24.25
    S-44 -885.722 -219.252 42.25
    S-45 920.537 463.474 12.75
    S-46 911.476 -481.054 26.25
    S-47 -911.507 481.054 11.25
    S-48 -920.574 -463.473 59.25
    S-49 480.366 966.809 56.25
    S-50 461.727 -975.853 65.75
    S-51 -461.758 975.849 16.75
    S-52 -480.403 -966.813 87.25
    S-53 714.732 843.133 49.25
    S-54 698.425 -856.696 53.75
    S-55 -698.455 856.694 14.75
    S-56 -714.770 -843.135 84.75
    S-57 1100.131 -10.556 3.75
    S-58 -1100.165 10.558 27.75
    S-59 249.865 1107.552 55.25
    S-60 228.566 -1112.148 77.75
    S-61 -227.398 1112.131 25.25
    S-62 -249.900 -1107.557 89.25
    S-63 964.010 730.717 27.25
    S-64 949.814 -749.083 46.25
    S-65 -949.844 749.082 17.25
    S-66 -964.048 -730.717 83.25
    S-67 1199.684 357.573 10.25
    S-68 1192.605 -380.527 19.25
    S-69 -1192.635 380.530 12.75
    S-70 -1199.721 -357.570 47.25
"""

#: Radius (m) of the sphere around each telescope type that collects photons (prod5).
SPHERE_RADIUS_M = {"L": 12.5, "M": 9.6, "S": 3.0}


@dataclass(frozen=True)
class Telescope:
    name: str
    x_m: float
    y_m: float
    z_m: float

    @property
    def radius_m(self) -> float:
        return SPHERE_RADIUS_M[self.name[0]]


@dataclass(frozen=True)
class Site:
    name: str
    description: str
    obslev_m: float
    atmosphere: int
    bx_ut: float
    bz_ut: float
    arrang_deg: float
    central_mst: str
    telescopes: tuple[Telescope, ...]


def _positions(table: str) -> tuple[Telescope, ...]:
    rows = (line.split() for line in table.strip().splitlines())
    return tuple(Telescope(name, float(x), float(y), float(z)) for name, x, y, z in rows)


SITES = {
    "Paranal": Site(
        name="Paranal",
        description="CTAO-South, Paranal (Chile)",
        obslev_m=2147.0,
        atmosphere=26,
        bx_ut=20.552,
        bz_ut=-9.367,
        arrang_deg=-4.533,
        central_mst="M-01",
        telescopes=_positions(_PARANAL_POSITIONS),
    ),
    "LaPalma": Site(
        name="LaPalma",
        description="CTAO-North, La Palma (Spain)",
        obslev_m=2158.0,
        atmosphere=36,
        bx_ut=30.909,
        bz_ut=23.409,
        arrang_deg=-4.3167,
        central_mst="M-15",
        telescopes=_positions(_LAPALMA_POSITIONS),
    ),
}

#: Array layouts, for either site: the prod5 baseline (La Palma 4 LSTs + 15 MSTs, Paranal
#: 4 LSTs + 25 MSTs + 70 SSTs), its four LSTs, or the one MST at the array centre.
LAYOUTS = ("baseline", "lst", "single-mst")

#: Telescopes point to the North (azimuth 0) or to the South (azimuth 180 deg).
POINTINGS = {"North": 0.0, "South": 180.0}


@dataclass(frozen=True)
class Particle:
    prmpar: int
    viewcone_deg: float
    emin_gev: float
    emax_gev: float


# Primaries as in the CTA productions (CTADIRAC: gamma, gamma-diffuse, electron, proton,
# helium). CORSIKA codes: gamma 1, electron 3, proton 14, helium 402 (A*100 + Z). Energy
# ranges at 20 deg zenith come from the CTA prod2 CORSIKA cards kept in CTADIRAC
# (INPUTS_CTA_PROD2_*): gammas and electrons 3 GeV - 330 TeV, protons 4 GeV - 600 TeV,
# helium 10 GeV - 1200 TeV; diffuse primaries come from within 10 deg of the pointing.
PARTICLES = {
    "gamma": Particle(prmpar=1, viewcone_deg=0.0, emin_gev=3.0, emax_gev=330e3),
    "gamma-diffuse": Particle(prmpar=1, viewcone_deg=10.0, emin_gev=3.0, emax_gev=330e3),
    "electron": Particle(prmpar=3, viewcone_deg=10.0, emin_gev=3.0, emax_gev=330e3),
    "proton": Particle(prmpar=14, viewcone_deg=10.0, emin_gev=4.0, emax_gev=600e3),
    "helium": Particle(prmpar=402, viewcone_deg=10.0, emin_gev=10.0, emax_gev=1200e3),
}

#: Power-law index of the simulated spectra (-2: equal CPU time per energy decade).
ESLOPE = -2.0


@dataclass(frozen=True)
class Zenith:
    energy_factor: float
    point_radius_m: float
    diffuse_radius_m: float


# The production zenith angles. At larger zenith angles the energy threshold rises and the
# Cherenkov light pool grows, so the energy range and the core-scatter radius grow too:
# 20 and 40 deg as in the CTA prod2 cards (energies x2, radii 2500/3000 m -> 2700/3300 m);
# 60 deg extrapolated with the same threshold scaling (about cos(zenith)^-2.7).
ZENITHS = {
    20: Zenith(energy_factor=1.0, point_radius_m=2500.0, diffuse_radius_m=3000.0),
    40: Zenith(energy_factor=2.0, point_radius_m=2700.0, diffuse_radius_m=3300.0),
    60: Zenith(energy_factor=5.0, point_radius_m=3500.0, diffuse_radius_m=4200.0),
}
#: Each shower is reused with this many random core positions (CSCAT): 10 for point-like
#: gammas, 20 for diffuse primaries, as in the CTA cards.
POINT_USES, DIFFUSE_USES = 10, 20


def layout_telescopes(site: str, layout: str) -> tuple[Telescope, ...]:
    """The telescopes of a layout at a site."""
    where = _site(site)
    if layout == "baseline":
        return where.telescopes
    if layout == "lst":
        return tuple(t for t in where.telescopes if t.name.startswith("L-"))
    if layout == "single-mst":
        return tuple(t for t in where.telescopes if t.name == where.central_mst)
    raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")


def corsika_phip(site: str, pointing: str) -> float:
    """CORSIKA's PHIP for showers coming from the pointing direction.

    PHIP is the azimuth of the primary's momentum in CORSIKA's frame (x to magnetic North,
    counted towards West), so a shower from azimuth A travels towards A + 180 deg; adding
    the declination (ARRANG) makes A a geographic azimuth, as CTAO's simtools does.
    """
    azimuth = _choice(POINTINGS, pointing, "pointing")
    return round((azimuth + 180.0 + _site(site).arrang_deg) % 360.0, 3)


def run_seeds(run: int) -> list[int]:
    """Four independent seeds for CORSIKA's random sequences, fixed by the run number.

    Each comes from SHA-256 of the run number and the sequence index, reduced to CORSIKA's
    valid range: the same run always repeats exactly, different runs get unrelated seeds,
    and the four of a run always differ from each other.
    """
    _check_run(run)
    seeds: list[int] = []
    salt = 0
    while len(seeds) < 4:
        digest = hashlib.sha256(f"concordia-corsika/{run}/{len(seeds)}/{salt}".encode()).digest()
        seed = int.from_bytes(digest[:8], "big") % MAX_SEED + 1
        if seed in seeds:
            salt += 1
            continue
        seeds.append(seed)
    return seeds


def output_name(run: int, site: str, particle: str, zenith: int, pointing: str, layout: str) -> str:
    """The file CORSIKA's IACT option writes the photon bunches to (eventio, zstd)."""
    azimuth = int(_choice(POINTINGS, pointing, "pointing"))
    return f"run{run:06d}_{particle}_za{zenith:02d}_azm{azimuth:03d}_{site}_{layout}.corsika.zst"


def make_input_card(
    run: int,
    site: str,
    particle: str,
    zenith: int,
    pointing: str,
    showers: int,
    layout: str,
    data_dir: str = DEFAULT_DATA_DIR,
) -> str:
    """The CORSIKA steering card of one run, in the form of the CTA production cards."""
    _check_run(run)
    where = _site(site)
    primary = _choice(PARTICLES, particle, "particle")
    angle = _choice(ZENITHS, zenith, "zenith")
    if not 1 <= showers <= MAX_SHOWERS:
        raise ValueError(f"showers must be 1 .. {MAX_SHOWERS}, got {showers}")
    telescopes = layout_telescopes(site, layout)
    phip = corsika_phip(site, pointing)
    emin = primary.emin_gev * angle.energy_factor
    emax = primary.emax_gev * angle.energy_factor
    if primary.viewcone_deg > 0:
        uses, radius_m = DIFFUSE_USES, angle.diffuse_radius_m
    else:
        uses, radius_m = POINT_USES, angle.point_radius_m
    seeds = run_seeds(run)
    lines = [
        "* CORSIKA steering card written by Concordia's corsika application.",
        f"* Run {run}: {particle} from the {pointing} at {zenith} deg zenith,",
        f"* {where.description}, layout {layout} ({len(telescopes)} telescopes).",
        "*",
        "* [ Run ]",
        f"RUNNR {run}",
        "EVTNR 1",
        f"NSHOW {showers}",
        "*",
        "* [ Primary ]",
        f"PRMPAR {primary.prmpar}",
        f"ESLOPE {ESLOPE:.1f}",
        f"ERANGE {emin:.1f} {emax:.1f}",
        f"THETAP {zenith:.1f} {zenith:.1f}",
        f"PHIP {phip:.3f} {phip:.3f}",
        f"VIEWCONE 0.0 {primary.viewcone_deg:.1f}",
        "*",
        "* [ Random number generator: four sequences in IACT mode ]",
        *(f"SEED {seed} 0 0" for seed in seeds),
        "*",
        f"* [ Site: {where.description} ]",
        f"OBSLEV {where.obslev_m * 100:.1f}",
        f"ATMOSPHERE {where.atmosphere} Y",
        f"MAGNET {where.bx_ut:.3f} {where.bz_ut:.3f}",
        f"ARRANG {where.arrang_deg:.4f}",
        "*",
        "* [ Core scatter: each shower is used several times, cores random ]",
        f"CSCAT {uses} {radius_m * 100:.1f} 0.0",
        "*",
        "* [ Telescopes: x (North) y (West) z (above OBSLEV) sphere radius, cm ]",
        *(f"* {names}" for names in textwrap.wrap(" ".join(t.name for t in telescopes), 70)),
        *(
            f"TELESCOPE {t.x_m * 100:.1f} {t.y_m * 100:.1f} {t.z_m * 100:.1f} "
            f"{t.radius_m * 100:.1f}"
            for t in telescopes
        ),
        "*",
        "* [ Interaction flags ]",
        "FIXHEI 0. 0",
        "FIXCHI 0.",
        "TSTART T",
        "ECUTS 0.3 0.1 0.02 0.02",
        "MUADDI F",
        "MUMULT T",
        "LONGI T 20. F F",
        "MAXPRT 10",
        "ECTMAP 1.E6",
        "*",
        "* [ Cherenkov emission ]",
        "CERSIZ 5.",
        "CERFIL 0",
        "CWAVLG 240. 1000.",
        "*",
        "* [ Input data, output ]",
        f"DATDIR {data_dir.rstrip('/')}/",
        "DIRECT ./",
        "PAROUT F F",
        "DEBUG F 6 F 1000000",
        f"TELFIL {output_name(run, site, particle, zenith, pointing, layout)}",
        "*",
        "* [ IACT tuning ]",
        "IACT SPLIT_AUTO 15000000",
        "IACT IO_BUFFER 800MB",
        "IACT MAX_BUNCHES 1000000",
        "*",
        "EXIT",
    ]
    return "\n".join(lines) + "\n"


def _site(name: str) -> Site:
    return _choice(SITES, name, "site")


def _choice(table: Mapping[K, V], key: K, what: str) -> V:
    try:
        return table[key]
    except KeyError:
        choices = ", ".join(str(k) for k in table)
        raise ValueError(f"unknown {what} {key!r}; choose one of {choices}") from None


def _check_run(run: int) -> None:
    if not 1 <= run <= MAX_RUN:
        raise ValueError(f"run number must be 1 .. {MAX_RUN} (CORSIKA's limit), got {run}")


# ---------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------

#: zstd frames start with these bytes; an IACT build without zstd support writes plain eventio.
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _bounded_int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is outside {lo} .. {hi}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Write the CORSIKA steering card of one CTA-style run and run CORSIKA on it."
    )
    parser.add_argument("--run", required=True, type=_bounded_int(1, MAX_RUN), help="run number")
    parser.add_argument("--site", required=True, choices=sorted(SITES))
    parser.add_argument("--particle", required=True, choices=list(PARTICLES))
    parser.add_argument("--zenith", required=True, type=int, choices=sorted(ZENITHS))
    parser.add_argument("--pointing", required=True, choices=list(POINTINGS))
    parser.add_argument("--showers", required=True, type=_bounded_int(1, MAX_SHOWERS))
    parser.add_argument("--layout", required=True, choices=LAYOUTS)
    parser.add_argument(
        "--corsika",
        default=os.environ.get("CORSIKA_BIN", DEFAULT_BINARY),
        help="the CORSIKA executable (default: $CORSIKA_BIN or %(default)s)",
    )
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("CORSIKA_DATA", DEFAULT_DATA_DIR),
        help="CORSIKA's data files and atmprof*.dat (default: $CORSIKA_DATA or %(default)s)",
    )
    parser.add_argument("--card-only", action="store_true", help="write the steering card and stop")
    return parser


def fail(message: str, code: int = 1) -> int:
    print(f"corsika_job: ERROR: {message}", file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    site = SITES[args.site]
    card = make_input_card(
        run=args.run,
        site=args.site,
        particle=args.particle,
        zenith=args.zenith,
        pointing=args.pointing,
        showers=args.showers,
        layout=args.layout,
        data_dir=args.data_dir,
    )
    card_path = Path(f"run{args.run:06d}.input")
    card_path.write_text(card)
    print(f"corsika_job: steering card {card_path}:\n{card}", flush=True)
    if args.card_only:
        return 0

    binary = Path(args.corsika)
    if not binary.is_file() or not os.access(binary, os.X_OK):
        return fail(
            f"no CORSIKA executable at {binary}: this job runs in the corsika application's "
            "image (built from the operator's CORSIKA source), or give --corsika PATH"
        )
    data_dir = Path(args.data_dir)
    atmprof = f"atmprof{site.atmosphere}.dat"
    if not Path(atmprof).exists():  # the IACT/ATMO package reads it from the work directory
        if not (data_dir / atmprof).is_file():
            return fail(f"atmospheric profile {atmprof} for {site.name} is not in {data_dir}")
        Path(atmprof).symlink_to((data_dir / atmprof).resolve())

    log_path = Path(f"run{args.run:06d}.corsika.log")
    print(f"corsika_job: running {binary} < {card_path} (log also in {log_path})", flush=True)
    finished = False
    with card_path.open() as stdin, log_path.open("w") as log:
        proc = subprocess.Popen(
            [str(binary)],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
            finished = finished or "END OF RUN" in line
        code = proc.wait()
    sys.stdout.flush()
    if code != 0:
        return fail(f"CORSIKA exited with code {code}; see {log_path}", code if code > 0 else 1)
    if not finished:
        return fail(f"CORSIKA stopped before the end of the run (no END OF RUN); see {log_path}")

    output = Path(
        output_name(args.run, args.site, args.particle, args.zenith, args.pointing, args.layout)
    )
    if not output.is_file() or output.stat().st_size == 0:
        return fail(f"CORSIKA finished but wrote no photon file {output}")
    with output.open("rb") as data:
        compressed = data.read(4) == _ZSTD_MAGIC
    if not compressed:  # keep the data, under a name that says what it is
        plain = output.with_suffix("")
        output.rename(plain)
        print(f"corsika_job: WARNING: this IACT build does not compress; kept {plain}", flush=True)
        output = plain
    print(f"corsika_job: run {args.run} done: {output} ({output.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
