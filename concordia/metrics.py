"""The Prometheus metrics of a Concordia process, defined in one place for every layer."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric

from concordia.core.states import JobStatus

# The *_created series (when a series was first seen) double a scrape for little use.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Concordia's own registries: what another library registers in the default one is not
# exported by accident. Three, so that a process exposes only what it records: a web process
# of `serve --workers N` no reconciler rounds, a `concordia worker` no HTTP requests.

#: The process's memory, CPU and garbage collector.
PROCESS_REGISTRY = CollectorRegistry(auto_describe=True)
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    PROCESS_REGISTRY.register(_collector)
#: What web pages and the API record.
WEB_REGISTRY = CollectorRegistry(auto_describe=True)
#: What the background work records (`concordia worker`, or `serve` alone).
WORK_REGISTRY = CollectorRegistry(auto_describe=True)

SUBMISSION_SECONDS = Histogram(
    "concordia_submission_seconds",
    "Time to accept a submission: checks, image selection, its jobs stored as Received.",
    registry=WEB_REGISTRY,
)
RECONCILE_ROUND_SECONDS = Histogram(
    "concordia_reconcile_round_seconds",
    "Time of a reconciler round: dispatch to and updates from every backend.",
    registry=WORK_REGISTRY,
)
RECONCILE_ROUND_FAILURES = Counter(
    "concordia_reconcile_round_failures",
    "Reconciler rounds that raised (the next round retries).",
    registry=WORK_REGISTRY,
)
IMAGE_BUILD_SECONDS = Histogram(
    "concordia_image_build_seconds",
    "Time of an image build, by outcome (ready or failed); waiting for a build slot excluded.",
    ["outcome"],
    # Builds take seconds (hello) to an hour (CORSIKA compiled from source).
    buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, float("inf")),
    registry=WORK_REGISTRY,
)
HTTP_REQUESTS = Counter(
    "concordia_http_requests",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
    registry=WEB_REGISTRY,
)
HTTP_REQUEST_SECONDS = Histogram(
    "concordia_http_request_seconds",
    "Time from a request's arrival to the end of its response, by method and route template.",
    ["method", "route"],
    registry=WEB_REGISTRY,
)


class _Scrape:
    """What one scrape exposes: this process's metrics and those read from the database at
    scrape time, which all processes sharing it report alike."""

    def __init__(self, registries: list[CollectorRegistry], extra: list[Metric]) -> None:
        self.registries, self.extra = registries, extra

    def collect(self) -> Iterator[Metric]:
        for registry in self.registries:
            yield from registry.collect()
        yield from self.extra


def jobs_family(counts: Iterable[tuple[str, str, int]], backends: Iterable[str]) -> Metric:
    """The jobs gauge from (state, backend, count) rows: every state of every configured
    backend is present, 0 where no job is, so that a series never vanishes when it empties."""
    values = {(state.value, backend): 0 for backend in backends for state in JobStatus}
    for state, backend, count in counts:
        values[(state, backend)] = count
    family = GaugeMetricFamily(
        "concordia_jobs", "Jobs in the database, by state and backend.", labels=["state", "backend"]
    )
    for (state, backend), count in sorted(values.items()):
        family.add_metric([state, backend], count)
    return family


def database_family(up: bool) -> Metric:
    return GaugeMetricFamily(
        "concordia_database_up", "1 if the database answered this scrape's query.", int(up)
    )


def workers_family(alive: int) -> Metric:
    return GaugeMetricFamily(
        "concordia_workers",
        "Workers holding their lease now (`concordia worker`, or `serve` alone); 0: no job "
        "is run, no image built.",
        alive,
    )


def exposition(
    counts: Iterable[tuple[str, str, int]] | None,
    backends: Iterable[str],
    *,
    works: bool,
    workers: int | None,
) -> bytes:
    """The Prometheus text format of a web process's metrics (and of the background work's
    if it ``works``: `serve` alone), of the jobs by state and backend (``counts``) and of the
    live ``workers`` (each None when the database did not answer: then no such gauge)."""
    extra = [database_family(counts is not None)]
    if counts is not None:
        extra.append(jobs_family(counts, backends))
    if workers is not None:
        extra.append(workers_family(workers))
    registries = [PROCESS_REGISTRY, WEB_REGISTRY, *[WORK_REGISTRY] * works]
    return generate_latest(_Scrape(registries, extra))


def work_exposition() -> bytes:
    """The Prometheus text format of a `concordia worker`'s metrics: its process, its
    reconciler rounds and image builds."""
    return generate_latest(_Scrape([PROCESS_REGISTRY, WORK_REGISTRY], []))
