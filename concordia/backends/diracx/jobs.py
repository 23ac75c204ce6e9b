"""What a Concordia job becomes in DiracX: its JDL, the rules of DIRAC it is refused for, and
the input sandbox its submission's jobs share (the job wrapper and its settings)."""

from __future__ import annotations

import base64
import json
from importlib import resources
from typing import Any

from concordia.backends.base import JobRefused, JobSpec
from concordia.backends.grid_images import GridImages
from concordia.backends.sandboxes import Sandbox, input_sandbox
from concordia.backends.wrapper.concordia_job_base import SH_SETTINGS, WRAPPER_FILES
from concordia.backends.wrapper.concordia_job_lake import DATALAKE_MANIFEST
from concordia.backends.wrapper.concordia_job_shell import sh_argument, shell_settings
from concordia.core.jdl import job_jdl

WRAPPER = "concordia-job.sh"
WRAPPER_PY = "concordia_job.py"
JOB_CONFIG = "concordia-job.json"
STD_OUTPUT, STD_ERROR = "std.out", "std.err"
#: What a description shows for the input sandbox until it is uploaded, at hand-over.
PENDING_SANDBOX = "<input sandbox: uploaded at hand-over>"
#: DIRAC's JobManager refuses a CPUTime outside this range (seconds).
CPU_TIME_RANGE = (100, 500_000)
#: DiracX's JobDB holds a JobGroup of at most this many characters.
JOB_GROUP_LENGTH = 32
#: Data-lake settings each job has its own of: in its arguments, not the shared sandbox.
JOB_OWN = frozenset({"names", "token_url"})


def jdl_of(spec: JobSpec, pfn: str, images: GridImages) -> str:
    """The JDL DiracX is sent for the job, its input sandbox at ``pfn``; JobRefused naming
    every rule of DIRAC it breaks."""
    if problems := refusals(spec):
        raise JobRefused(problems)
    # The job's own signed link to its image, if it has one.
    url = images.link(spec.image, spec.uuid) if spec.image is not None else None
    return job_jdl(
        executable=WRAPPER,
        arguments=wrapper_arguments(
            spec.argv,
            url,
            image=spec.image is not None,
            datalake_names=_names(spec),
            datalake_token_url=_job_lake(spec).get("token_url"),
        ),
        job_name=job_name(spec),
        job_group=spec.job_group or "concordia",
        input_sandbox=[pfn],
        output_sandbox=[STD_OUTPUT, STD_ERROR, *spec.outputs, *_manifest(spec)],
        std_output=STD_OUTPUT,
        std_error=STD_ERROR,
        cpu_time=spec.cpu_time,
        priority=spec.priority,
        tags=spec.tags,
    )


def submission_sandbox(spec: JobSpec, images: GridImages) -> Sandbox:
    """The wrapper, the submission's settings and the application's input files: the same
    for every job of a submission (its arguments are in the JDL), so uploaded once."""
    image = images.publish(spec.image, spec.vo) if spec.image is not None else None
    config = wrapper_config(
        image,
        spec.network,
        images.wrapper_settings(),
        datalake=_lake_config(spec),
    )
    files = wrapper_files(config)
    for path in spec.input_files:
        files[path.name] = path.read_bytes()
    return input_sandbox(files, executables=frozenset({WRAPPER, WRAPPER_PY}))


def refusals(spec: JobSpec) -> list[str]:
    """What DIRAC or DiracX would refuse in the job, each with its rule."""
    problems = []
    low, high = CPU_TIME_RANGE
    if not low <= spec.cpu_time <= high:
        problems.append(
            f"CPUTime {spec.cpu_time} s is outside DIRAC's {low}-{high} s, which its job "
            "manager refuses: the application's cpu_time must change to run on the grid"
        )
    group = spec.job_group or "concordia"
    if len(group) > JOB_GROUP_LENGTH:
        problems.append(
            f"JobGroup {group!r} is {len(group)} characters, more than the {JOB_GROUP_LENGTH} "
            "DiracX holds: the application needs a shorter name to run on the grid"
        )
    return problems


def job_name(spec: JobSpec) -> str:
    """Concordia's job and run: what finds a job DiracX accepted before Concordia recorded it,
    and no earlier run of a rescheduled job."""
    return f"{spec.uuid}.{spec.attempt}"


def wrapper_arguments(
    argv: list[str],
    image_url: str | None,
    *,
    image: bool,
    datalake_names: str | None = None,
    datalake_token_url: str | None = None,
) -> list[str]:
    """The wrapper's arguments in a job's JDL: the job as base64 JSON (for concordia_job.py)
    and, for a job in an image, the command as concordia-job.sh reads it, when it can."""
    job: dict[str, Any] = {"argv": argv}
    if image:
        job["image_url"] = image_url
    if datalake_names is not None:
        job["datalake_names"] = datalake_names  # the job's own: its sandbox is shared
    if datalake_token_url is not None:
        # Its link for upload tokens (signed for this job): never a token, which the JDL
        # would show to users and DIRAC's administrators.
        job["datalake_token_url"] = datalake_token_url
    arguments = [base64.urlsafe_b64encode(json.dumps(job).encode()).decode()]
    sh_form: str | None = sh_argument(argv, image_url) if image else None
    return arguments if sh_form is None else [*arguments, sh_form]


def wrapper_config(
    image: dict[str, Any] | None,
    network: bool,
    settings: dict[str, Any],
    *,
    datalake: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A submission's concordia-job.json: its image, network, the site-wide settings and,
    given, where its jobs store their data (concordia_job.py's "datalake" keys: url, scope,
    data, outputs, sandbox_max_bytes, ca, token)."""
    config = {"image": image, "network": network, **settings}
    if datalake is not None:
        config["datalake"] = datalake
    return config


def _lake_config(spec: JobSpec) -> dict[str, Any] | None:
    """The submission's data-lake settings for its wrapper: the job's own name prefix goes
    in its arguments instead; the output-sandbox globs, for files too big for it."""
    if spec.datalake is None:
        return None
    lake = {key: value for key, value in spec.datalake.items() if key not in JOB_OWN}
    lake.setdefault("outputs", list(spec.outputs))
    return lake


def _job_lake(spec: JobSpec) -> dict[str, Any]:
    return spec.datalake or {}


def _names(spec: JobSpec) -> str | None:
    return None if spec.datalake is None else str(spec.datalake.get("names", ""))


def _manifest(spec: JobSpec) -> list[str]:
    """What the wrapper stored in the data lake comes back in the sandbox, to be registered."""
    return [DATALAKE_MANIFEST] if spec.datalake is not None else []


def wrapper_files(config: dict[str, Any]) -> dict[str, bytes]:
    """The wrapper and a submission's settings, as a job's directory on a node has them."""
    files = {name: _wrapper_file(name) for name in WRAPPER_FILES}
    files[JOB_CONFIG] = json.dumps(config, sort_keys=True).encode()
    settings: str | None = shell_settings(config)
    if settings is not None:
        files[SH_SETTINGS] = settings.encode()
    return files


def _wrapper_file(name: str) -> bytes:
    return (resources.files("concordia.backends") / "wrapper" / name).read_bytes()
