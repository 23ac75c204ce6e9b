"""Simulate air showers with ShowerModel and the photoelectrons each telescope of an array sees."""

from __future__ import annotations

import argparse
import csv
import hashlib
import math
import random
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

#: Telescope layouts: name -> (telescopes per side of a square grid, spacing in km).
#: 200 m is about the spacing of CTA's medium-sized telescopes.
LAYOUTS: dict[str, tuple[int, float]] = {
    "square-4": (2, 0.2),
    "grid-9": (3, 0.2),
    "grid-25": (5, 0.2),
}
#: ShowerModel's longitudinal profile for each primary: Greisen describes electromagnetic
#: (gamma) showers, Gaisser-Hillas hadronic (proton) ones.
PROFILE_MODELS = {"gamma": "Greisen", "proton": "Gaisser-Hillas"}
ENERGY_RANGE_TEV = (0.01, 1000.0)
MAX_ZENITH_DEG = 60.0
#: Photoelectrons a telescope needs before the shower counts as seen by it (a trigger proxy).
TRIGGER_PE = 100.0
#: What --photon-file can write: nothing, or the photon arrival times per telescope.
PHOTON_FILES = ("none", "arrival-times")
#: Arrival-time histograms: 0.25 ns bins (finer than the 1 ns CTA cameras sample at) over
#: 512 ns, which holds the pulses here (under 100 ns up to 1 km from the core).
PHOTON_BIN_NS = 0.25
PHOTON_BINS = 2048
#: Speed of light in km per microsecond, ShowerModel's own value.
LIGHT_KM_PER_US = 0.2998


@dataclass(frozen=True)
class ShowerSpec:
    """The sampled parameters of one shower."""

    index: int
    energy_tev: float
    core_x_km: float
    core_y_km: float


@dataclass(frozen=True)
class Arrivals:
    """When the light of one shower reaches one telescope: a histogram of photoelectrons.

    Times are in ns since the primary crossed the top of the atmosphere (ShowerModel's
    track time origin). Bin k starts at t_first_ns + k * PHOTON_BIN_NS."""

    t_first_ns: float
    t_mean_ns: float
    pe: Any  # numpy float32 array of PHOTON_BINS photoelectrons per bin
    npe_late: float  # photoelectrons arriving after the last bin


@dataclass(frozen=True)
class ShowerResult:
    """One simulated shower: what was asked, its profile summary and the signal per telescope."""

    spec: ShowerSpec
    x_max: float
    n_ch_max: float
    npe: list[float]
    profile_x: list[float]
    profile_n_ch: list[float]
    cpu_s: float
    arrivals: list[Arrivals] | None = None


def layout_positions(layout: str) -> list[tuple[float, float]]:
    """Telescope (x, y) ground positions in km, centred on (0, 0), row by row from the north."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    per_side, spacing = LAYOUTS[layout]
    offsets = [(i - (per_side - 1) / 2) * spacing for i in range(per_side)]
    return [(x, y) for y in reversed(offsets) for x in offsets]


def derive_seed(run: int) -> int:
    """The random seed of a run: a hash, so neighbouring runs get unrelated streams."""
    if run < 0:
        raise ValueError(f"run must be >= 0, got {run}")
    digest = hashlib.sha256(f"concordia-showermodel-run-{run}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # 63 bits: fits any signed 64-bit seed


def sample_showers(
    seed: int, count: int, energy_min: float, energy_max: float, core_radius_km: float
) -> list[ShowerSpec]:
    """Energies log-uniform in [energy_min, energy_max] TeV, cores uniform in a disc."""
    rng = random.Random(seed)  # the stdlib generator's sequence is stable across versions
    specs = []
    for index in range(count):
        energy = energy_min * (energy_max / energy_min) ** rng.random()
        # sqrt makes the core density uniform per unit area, not per unit radius.
        radius = core_radius_km * math.sqrt(rng.random())
        phi = 2 * math.pi * rng.random()
        specs.append(ShowerSpec(index, energy, radius * math.cos(phi), radius * math.sin(phi)))
    return specs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", type=int, required=True, help="run number (sets the seed)")
    parser.add_argument("--showers", type=int, default=10, help="showers to simulate")
    parser.add_argument("--primary", choices=sorted(PROFILE_MODELS), default="gamma")
    parser.add_argument("--energy-min", type=float, default=0.1, help="lowest energy in TeV")
    parser.add_argument("--energy-max", type=float, default=10.0, help="highest energy in TeV")
    parser.add_argument("--zenith", type=float, default=20.0, help="zenith angle in degrees")
    parser.add_argument("--layout", choices=list(LAYOUTS), default="square-4")
    parser.add_argument(
        "--core-radius", type=float, default=300.0, help="cores fall within this radius (m)"
    )
    parser.add_argument(
        "--photon-file",
        choices=PHOTON_FILES,
        default="none",
        help="arrival-times: write photons_run<run>.npy, photon arrival times per telescope",
    )
    parser.add_argument("--outdir", type=Path, default=Path("."), help="where results go")
    args = parser.parse_args(argv)
    lo, hi = ENERGY_RANGE_TEV
    if args.run < 0:
        parser.error(f"--run must be >= 0, got {args.run}")
    if not 1 <= args.showers <= 100000:
        parser.error(f"--showers must be between 1 and 100000, got {args.showers}")
    for name in ("energy_min", "energy_max"):
        value = getattr(args, name)
        if not lo <= value <= hi:  # also refuses nan
            parser.error(f"--{name.replace('_', '-')} must be between {lo} and {hi} TeV")
    if args.energy_min > args.energy_max:
        parser.error(
            f"--energy-min ({args.energy_min} TeV) is above --energy-max ({args.energy_max} TeV)"
        )
    if not 0 <= args.zenith <= MAX_ZENITH_DEG:
        parser.error(f"--zenith must be between 0 and {MAX_ZENITH_DEG} degrees")
    if not 0 <= args.core_radius <= 5000:
        parser.error("--core-radius must be between 0 and 5000 m")
    return args


def arrival_histogram(t_ns: Any, spread_ns: Any, npe: Any) -> Arrivals:
    """Histogram the light of the track points seen by one telescope.

    Point i sends npe[i] photoelectrons that arrive spread uniformly over spread_ns[i]
    around t_ns[i] (a track step seen at an angle arrives over a while, not at once); the
    histogram starts at the whole bin before the first light."""
    import numpy as np

    t = np.asarray(t_ns, dtype=np.float64)
    width = np.maximum(np.asarray(spread_ns, dtype=np.float64), 1e-6)
    weight = np.asarray(npe, dtype=np.float64)
    first, last = t - width / 2, t + width / 2
    start = float(np.floor(first.min() / PHOTON_BIN_NS) * PHOTON_BIN_NS)
    end = start + PHOTON_BIN_NS * PHOTON_BINS
    # Only the bins up to the last light are computed (a pulse is tens of ns, the window
    # 512): a third of the CPU time of the whole histogram.
    used = min(PHOTON_BINS, math.ceil((float(last.max()) - start) / PHOTON_BIN_NS))
    edges = start + PHOTON_BIN_NS * np.arange(used + 1)
    # The share of each point's light in each bin: the overlap of its arrival interval with
    # the bin, exactly zero outside it (so empty bins hold 0, not rounding noise).
    overlap = np.minimum(last[:, None], edges[None, 1:]) - np.maximum(
        first[:, None], edges[None, :-1]
    )
    pe = np.zeros(PHOTON_BINS)
    pe[:used] = weight @ (np.clip(overlap, 0.0, None) / width[:, None])
    total = float(weight.sum())
    mean = float((weight * t).sum() / total) if total > 0 else float(t.min())
    late = float((weight * np.clip((last - end) / width, 0.0, 1.0)).sum())
    return Arrivals(
        t_first_ns=start,
        t_mean_ns=mean,
        pe=pe.astype(np.float32),
        npe_late=late,
    )


def shower_arrivals(shower: Any, event: Any) -> list[Arrivals]:
    """Photon arrival times at each telescope of an event, from ShowerModel's geometry.

    A photon emitted at track point i reaches the telescope at the time the shower front
    is there (track.t) plus its path to the telescope over c (projection.distance); the
    points outside the field of view give no light but still the time it would come."""
    import numpy as np

    track = shower.track
    arrivals = []
    for projection, signal in zip(event.projections, event.signals, strict=True):
        times_us = track.t + projection.distance / LIGHT_KM_PER_US
        points = signal.index
        if len(points) == 0:
            first = float(np.nanmin(times_us.to_numpy())) * 1000
            arrivals.append(arrival_histogram([first], [0.0], [0.0]))
            continue
        beta = np.radians(projection.beta.loc[points].to_numpy())
        # ShowerModel's arrival-time interval of one track step (Signal.show).
        spread_us = track.dl / LIGHT_KM_PER_US * (1.0 - np.cos(beta))
        arrivals.append(
            arrival_histogram(
                times_us.loc[points].to_numpy() * 1000,
                spread_us * 1000,
                signal.Npe_total.to_numpy(),
            )
        )
    return arrivals


def simulate(
    specs: list[ShowerSpec],
    primary: str,
    zenith: float,
    positions: list[tuple[float, float]],
    photons: bool = False,
) -> list[ShowerResult]:
    """Run ShowerModel for each shower; the telescopes all point at the source. With
    photons, each result carries the photon arrival times at each telescope."""
    # Imported here so the helpers above load (and are tested) without the package.
    import showermodel as sm

    # The atmosphere is the same for every shower, so it is built once.
    atmosphere = sm.Atmosphere()
    observatory = sm.Observatory(
        *[sm.IACT(x=x, y=y, z=0.0, theta=zenith, az=0.0) for x, y in positions],
        obs_type="concordia",
    )
    results = []
    for spec in specs:
        start = time.process_time()
        shower = sm.Shower(
            E=spec.energy_tev * 1e6,  # ShowerModel takes MeV
            theta=zenith,
            az=0.0,
            x0=spec.core_x_km,
            y0=spec.core_y_km,
            prf_model=PROFILE_MODELS[primary],
            atmosphere=atmosphere,
        )
        event = shower.Event(observatory)
        profile = shower.profile
        arrivals = shower_arrivals(shower, event) if photons else None
        results.append(
            ShowerResult(
                spec=spec,
                x_max=float(shower.X_max),
                n_ch_max=float(profile.N_ch.max()),
                npe=[float(signal.Npe_total_sum) for signal in event.signals],
                profile_x=[float(v) for v in profile.X],
                profile_n_ch=[float(v) for v in profile.N_ch],
                cpu_s=time.process_time() - start,
                arrivals=arrivals,
            )
        )
    return results


def write_csv(
    path: Path, run: int, seed: int, primary: str, zenith: float, results: list[ShowerResult]
) -> None:
    n_tel = len(results[0].npe)
    header = [
        "run",
        "seed",
        "shower",
        "primary",
        "energy_tev",
        "zenith_deg",
        "core_x_m",
        "core_y_m",
        "xmax_g_cm2",
        "n_ch_max",
        "npe_sum",
        f"n_tel_over_{TRIGGER_PE:g}pe",
        *[f"npe_tel{i:02d}" for i in range(n_tel)],
    ]
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        for r in results:
            writer.writerow(
                [
                    run,
                    seed,
                    r.spec.index,
                    primary,
                    f"{r.spec.energy_tev:.6g}",
                    f"{zenith:g}",
                    f"{r.spec.core_x_km * 1000:.2f}",
                    f"{r.spec.core_y_km * 1000:.2f}",
                    f"{r.x_max:.2f}",
                    f"{r.n_ch_max:.6g}",
                    f"{sum(r.npe):.6g}",
                    sum(npe >= TRIGGER_PE for npe in r.npe),
                    *[f"{npe:.6g}" for npe in r.npe],
                ]
            )


def photon_dtype() -> Any:
    """One row of photons_run<run>.npy: a shower seen by a telescope."""
    import numpy as np

    return np.dtype(
        [
            ("run", np.int64),
            ("shower", np.int32),
            ("telescope", np.int32),
            ("energy_tev", np.float64),
            ("core_x_m", np.float32),
            ("core_y_m", np.float32),
            ("tel_x_m", np.float32),
            ("tel_y_m", np.float32),
            ("npe", np.float64),  # photoelectrons in all, the CSV's npe_telNN
            ("t_first_ns", np.float64),  # start of the first bin
            ("t_mean_ns", np.float64),  # photoelectron-weighted mean arrival time
            ("npe_late", np.float32),  # photoelectrons after the last bin
            ("pe", np.float32, (PHOTON_BINS,)),  # photoelectrons per PHOTON_BIN_NS bin
        ]
    )


def write_photons(
    path: Path, run: int, positions: list[tuple[float, float]], results: list[ShowerResult]
) -> None:
    """Write the arrival-time histograms as one NumPy structured array (np.load reads it,
    no pickle): a row per shower and telescope, shower by shower."""
    import numpy as np

    rows = np.lib.format.open_memmap(
        path, mode="w+", dtype=photon_dtype(), shape=(len(results) * len(positions),)
    )
    for i, r in enumerate(results):
        if r.arrivals is None:
            raise ValueError(f"shower {r.spec.index} was simulated without photons")
        for j, (a, (x, y), npe) in enumerate(zip(r.arrivals, positions, r.npe, strict=True)):
            row = rows[i * len(positions) + j]
            row["run"], row["shower"], row["telescope"] = run, r.spec.index, j
            row["energy_tev"], row["npe"] = r.spec.energy_tev, npe
            row["core_x_m"], row["core_y_m"] = r.spec.core_x_km * 1000, r.spec.core_y_km * 1000
            row["tel_x_m"], row["tel_y_m"] = x * 1000, y * 1000
            row["t_first_ns"], row["t_mean_ns"] = a.t_first_ns, a.t_mean_ns
            row["npe_late"], row["pe"] = a.npe_late, a.pe
    rows.flush()
    del rows  # closes the file


def plot_profiles(path: Path, run: int, primary: str, results: list[ShowerResult]) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    colours, scale = _energy_colours(plt, results)
    for r, colour in zip(results, colours, strict=True):
        ax.plot(r.profile_x, r.profile_n_ch, color=colour, lw=1.2)
    ax.set_yscale("log")
    ax.set_ylim(bottom=max(1.0, min(r.n_ch_max for r in results) * 1e-3))
    ax.set_xlabel("Slant depth X (g/cm²)")
    ax.set_ylabel("Charged particles N_ch")
    ax.set_title(f"Run {run}: longitudinal profiles of {len(results)} {primary} showers")
    fig.colorbar(scale, ax=ax, label="log10(E / TeV)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_signals(
    path: Path,
    run: int,
    layout: str,
    positions: list[tuple[float, float]],
    results: list[ShowerResult],
) -> None:
    plt = _pyplot()
    fig, (ax_map, ax_sig) = plt.subplots(1, 2, figsize=(13, 5.5))
    colours, scale = _energy_colours(plt, results)
    xs = [x * 1000 for x, _ in positions]
    ys = [y * 1000 for _, y in positions]
    ax_map.scatter(xs, ys, marker="^", s=120, c="k", label="telescope")
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        ax_map.annotate(str(i), (x, y), textcoords="offset points", xytext=(6, 6))
    ax_map.scatter(
        [r.spec.core_x_km * 1000 for r in results],
        [r.spec.core_y_km * 1000 for r in results],
        c=colours,
        s=30,
        label="shower core",
    )
    fig.colorbar(scale, ax=ax_sig, label="log10(E / TeV)")
    ax_map.set_aspect("equal", adjustable="datalim")
    ax_map.set_xlabel("x, east (m)")
    ax_map.set_ylabel("y, north (m)")
    ax_map.set_title(f"Layout {layout} and shower cores")
    ax_map.legend(loc="best", fontsize="small")

    tel_ids = list(range(len(positions)))
    for r, colour in zip(results, colours, strict=True):
        # Zero signals (shower outside the field of view) cannot go on a log axis.
        shown = [(t, npe) for t, npe in zip(tel_ids, r.npe, strict=True) if npe > 0]
        if shown:
            ax_sig.plot(*zip(*shown, strict=True), color=colour, marker="o", lw=0.8, alpha=0.8)
    ax_sig.axhline(TRIGGER_PE, color="r", ls="--", label=f"{TRIGGER_PE:g} p.e.")
    ax_sig.set_yscale("log")
    ax_sig.set_xticks(tel_ids[:: len(tel_ids) // 13 + 1])  # at most 13 readable labels
    ax_sig.set_xlabel("Telescope")
    ax_sig.set_ylabel("Photoelectrons (Cherenkov + fluorescence)")
    ax_sig.set_title(f"Run {run}: signal per telescope, one line per shower")
    ax_sig.legend(loc="upper right", fontsize="small")
    ax_sig.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _energy_colours(plt: Any, results: list[ShowerResult]) -> tuple[list[Any], Any]:
    """One colour per shower by log energy, and the scale for a colour bar: plots match."""
    energies = [math.log10(r.spec.energy_tev) for r in results]
    lo, hi = min(energies), max(energies)
    norm = plt.Normalize(lo, hi if hi > lo else lo + 1)  # one energy: any non-empty range
    scale = plt.cm.ScalarMappable(norm=norm, cmap="viridis")
    return [scale.to_rgba(e) for e in energies], scale


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # batch job: no display, whatever MPLBACKEND says
    import matplotlib.pyplot as plt

    return plt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    seed = derive_seed(args.run)
    positions = layout_positions(args.layout)
    print(f"run {args.run}: seed {seed}")
    print(
        f"{args.showers} {args.primary} showers, {args.energy_min:g}-{args.energy_max:g} TeV "
        f"(log-uniform), zenith {args.zenith:g} deg, cores within {args.core_radius:g} m, "
        f"layout {args.layout} ({len(positions)} telescopes)"
    )
    specs = sample_showers(
        seed, args.showers, args.energy_min, args.energy_max, args.core_radius / 1000
    )
    print(f"ShowerModel {metadata.version('ShowerModel')}, Python {sys.version.split()[0]}")
    photons = args.photon_file == "arrival-times"
    results = simulate(specs, args.primary, args.zenith, positions, photons)
    for r in results:
        seen = sum(npe >= TRIGGER_PE for npe in r.npe)
        print(
            f"  shower {r.spec.index:3d}: E={r.spec.energy_tev:8.3f} TeV "
            f"core=({r.spec.core_x_km * 1000:7.1f}, {r.spec.core_y_km * 1000:7.1f}) m "
            f"Xmax={r.x_max:6.1f} g/cm2 p.e.={sum(r.npe):10.1f} "
            f"telescopes>={TRIGGER_PE:g}pe: {seen}/{len(r.npe)} ({r.cpu_s:.2f} s CPU)"
        )
    sim_cpu = sum(r.cpu_s for r in results)
    args.outdir.mkdir(parents=True, exist_ok=True)
    outputs = [
        args.outdir / f"{stem}_run{args.run}.{ext}"
        for stem, ext in (("showers", "csv"), ("profile", "png"), ("signal", "png"))
    ]
    write_csv(outputs[0], args.run, seed, args.primary, args.zenith, results)
    plot_profiles(outputs[1], args.run, args.primary, results)
    plot_signals(outputs[2], args.run, args.layout, positions, results)
    if photons:
        outputs.append(args.outdir / f"photons_run{args.run}.npy")
        write_photons(outputs[-1], args.run, positions, results)
    for path in outputs:
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    print(
        f"done: {len(results)} showers, simulation {sim_cpu:.2f} s CPU; total "
        f"{time.perf_counter() - wall0:.2f} s wall, {time.process_time() - cpu0:.2f} s CPU"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
