"""A submission's jobs planned before anything is stored: checked, each with its JDL, previewed."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from concordia.backends.base import Backend, JobRefused, JobSpec
from concordia.core.application import (
    ApplicationDef,
    expand_batch,
    validate_build_args,
    validate_parameters,
)
from concordia.core.parameters import ParameterErrors, ParamValue
from concordia.core.rules import WARN_SHARE
from concordia.core.units import duration
from concordia.db import submissions as submission_queries
from concordia.logic.database import Database
from concordia.logic.errors import Invalid
from concordia.logic.platform import Platform
from concordia.logic.submission_models import (
    CpuEstimate,
    PlannedJob,
    SequenceRange,
    SubmissionPreview,
    SubmissionRequest,
)
from concordia.settings import OperationSettings

#: What a job's uuid is in the preview of a submission not yet made.
PREVIEW_UUID = "<job uuid>"


def job_group(app: ApplicationDef, submission_id: int) -> str:
    """The submission's name among a grid's jobs (DIRAC's JobGroup)."""
    return f"{app.name}.{submission_id}"


def job_spec(
    app: ApplicationDef,
    directory: Path,
    *,
    uuid: str,
    job_id: int,
    name: str,
    argv: list[str],
    submission_id: int,
    **run: Any,
) -> JobSpec:
    """What a backend is given of a job of ``app``; ``run`` says how it runs now (image,
    proxy, owner, attempt...). The one place both the recorded JDL and the job sent are
    made from: they cannot differ."""
    return JobSpec(
        uuid=uuid,
        job_id=job_id,
        name=name,
        argv=argv,
        input_files=[directory / rel for rel in app.input_files],
        outputs=app.outputs,
        cpu_time=app.cpu_time,
        priority=app.priority,
        tags=app.tags,
        network=app.network,
        limits=app.limits,
        job_group=job_group(app, submission_id),
        **run,
    )


def check_request(
    app: ApplicationDef, request: SubmissionRequest
) -> tuple[dict[str, ParamValue], dict[str, ParamValue]]:
    """The coerced parameters and build arguments; raises Invalid naming the field. No I/O."""
    try:
        values = validate_parameters(app, request.parameters)
    except ParameterErrors as exc:
        raise Invalid.many([(f"parameters.{e.field}", e.message) for e in exc.errors]) from None
    try:
        build_args = validate_build_args(app, request.build_args)
    except ParameterErrors as exc:
        raise Invalid.many([(f"build_args.{e.field}", e.message) for e in exc.errors]) from None
    return values, build_args


def plan_jobs(
    backend: Backend,
    app: ApplicationDef,
    values: dict[str, ParamValue],
    submission_id: int,
    directory: Path,
    *,
    preview: bool = False,
) -> list[PlannedJob]:
    """Every job of a submission with the JDL its backend is given, each with a new uuid
    (``preview``: only the first, its uuid a placeholder); raises Invalid naming each rule
    of the backend the jobs break."""
    plans = expand_batch(app, values, 1 if preview else None)
    if preview:
        uuids = [PREVIEW_UUID]
    else:
        uuids = [str(uuid.uuid4()) for _ in plans]
    planned = []
    for plan, job_uuid in zip(plans, uuids, strict=True):
        spec = job_spec(
            app, directory, uuid=job_uuid, job_id=0, name=plan.name, argv=plan.argv,
            submission_id=submission_id,
        )  # fmt: skip
        try:
            jdl = backend.describe(spec)
        except JobRefused as exc:
            raise Invalid.many([("application", p) for p in exc.problems]) from None
        planned.append(
            PlannedJob(
                index=plan.index, uuid=job_uuid, name=plan.name, parameters=plan.values,
                argv=plan.argv, jdl=jdl,
            )
        )  # fmt: skip
    return planned


def chosen_backend(
    settings: OperationSettings, backends: dict[str, Backend], request: SubmissionRequest
) -> tuple[str, Backend]:
    """The backend a request names, or the default; raises Invalid for an unknown one."""
    name = request.backend or settings.default_backend
    if name not in backends:
        raise Invalid("backend", f"unknown backend; available: {', '.join(backends)}")
    return name, backends[name]


async def next_submission_id(db: Database) -> int:
    """The id the next submission will most likely have (another may take it first)."""
    async with db.reading() as session:
        return await submission_queries.last_id(session) + 1


async def preview(
    platform: Platform, app: ApplicationDef, request: SubmissionRequest
) -> SubmissionPreview:
    """The jobs a request would create and the JDL its backend would be given for the first;
    raises Invalid naming each bad value, or each rule of the backend the jobs break."""
    name, backend = chosen_backend(platform.settings, platform.backends, request)
    values, _ = check_request(app, request)
    plans = expand_batch(app, values)
    ranges = [
        SequenceRange(name=seq, first=int(plans[0].values[seq]), last=int(plans[-1].values[seq]))
        for seq in app.batch.sequences
    ]
    [first] = plan_jobs(
        backend, app, values, await next_submission_id(platform.db), platform.catalog.directory,
        preview=True,
    )  # fmt: skip
    return SubmissionPreview(
        count=len(plans),
        names=[plan.name for plan in plans],
        ranges=ranges,
        backend=name,
        first_jdl=first.jdl,
        cpu=cpu_estimate(app, values, len(plans)),
    )


def cpu_estimate(
    app: ApplicationDef, values: dict[str, ParamValue], count: int
) -> CpuEstimate | None:
    """The application's estimate of CPU time for these values, if it has one."""
    seconds = app.cpu_seconds(values)
    if seconds is None:
        return None
    warning = None
    if seconds >= WARN_SHARE * app.cpu_time:
        warning = (
            f"each job needs about {duration(seconds)} of its {duration(app.cpu_time)}: "
            "a slow worker node may stop it before the end; give each job less work"
        )
    return CpuEstimate(
        per_job_seconds=seconds,
        total_seconds=seconds * count,
        limit_seconds=app.cpu_time,
        warning=warning,
    )
