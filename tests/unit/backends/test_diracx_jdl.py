"""The JDL the diracx backend gives DiracX for a job, and the rules of DIRAC it refuses."""

from __future__ import annotations

import base64
import io
import json
import tarfile

import pytest

from concordia.backends.base import JobRefused, JobSpec
from concordia.backends.diracx import DiracXBackend
from concordia.backends.diracx.jobs import PENDING_SANDBOX, submission_sandbox
from concordia.core.jdl import parse_jdl
from concordia.settings import Settings

GRID = DiracXBackend(
    Settings(diracx_url="https://diracx.invalid"), "http://127.0.0.1:8000"
)  # no call is made


def spec(**fields: object) -> JobSpec:
    values: dict[str, object] = {
        "uuid": "5b0e", "job_id": 1, "name": "hello_1", "argv": ["echo", "hi"],
        "cpu_time": 600, "job_group": "hello.7",
    }  # fmt: skip
    values.update(fields)
    return JobSpec.model_validate(values)


def test_the_jdl_carries_what_the_application_asks_for() -> None:
    jdl = parse_jdl(GRID.describe(spec(priority=7, tags=["8Processors", "GPU"], attempt=2)))
    assert jdl["Priority"] == 7 and jdl["Tags"] == ["8Processors", "GPU"]
    assert jdl["CPUTime"] == 600 and jdl["JobGroup"] == "hello.7"
    assert jdl["JobName"] == "5b0e.2"  # the job and its run: how a lost hand-over is found
    assert jdl["InputSandbox"] == [PENDING_SANDBOX]


@pytest.mark.parametrize("cpu_time", [100, 500_000])
def test_cpu_time_at_dirac_bounds_is_sent(cpu_time: int) -> None:
    assert parse_jdl(GRID.describe(spec(cpu_time=cpu_time)))["CPUTime"] == cpu_time


@pytest.mark.parametrize("cpu_time", [1, 99, 500_001])
def test_cpu_time_outside_dirac_bounds_is_refused_naming_the_rule(cpu_time: int) -> None:
    with pytest.raises(JobRefused) as refused:
        GRID.describe(spec(cpu_time=cpu_time))
    [problem] = refused.value.problems
    assert problem.startswith(f"CPUTime {cpu_time} s is outside DIRAC's 100-500000 s")


def test_a_job_group_longer_than_diracx_holds_is_refused_naming_the_rule() -> None:
    assert parse_jdl(GRID.describe(spec(job_group="a" * 30 + ".7")))["JobGroup"] == "a" * 30 + ".7"
    with pytest.raises(JobRefused) as refused:
        GRID.describe(spec(job_group="a" * 30 + ".17"))
    [problem] = refused.value.problems
    assert problem.startswith(f"JobGroup '{'a' * 30}.17' is 33 characters, more than the 32")


def test_every_broken_rule_is_named_at_once() -> None:
    with pytest.raises(JobRefused) as refused:
        GRID.describe(spec(cpu_time=60, job_group="g" * 40))
    assert [p.split()[0] for p in refused.value.problems] == ["CPUTime", "JobGroup"]


async def test_a_refused_job_is_not_sent_and_fails_with_the_rule() -> None:
    # Refused before any call: the backend's URL does not even resolve.
    [ref] = await GRID.submit([spec(cpu_time=60, owner="jane", vo="cta", group="cta_user")])
    assert ref.ref == "" and ref.error is not None and ref.error.startswith("CPUTime 60 s")


def test_a_job_with_a_datalake_gets_its_names_and_brings_back_its_manifest() -> None:
    lake = {"url": "https://se.example/dav/", "scope": "user.jane", "data": ["*.zst"]}
    job = spec(outputs=["*.root"], datalake={**lake, "names": "ds.000001."})
    jdl = parse_jdl(GRID.describe(job))
    assert jdl["OutputSandbox"] == ["std.out", "std.err", "*.root", "concordia-datalake.json"]
    [argument] = jdl["Arguments"].split()
    sent = json.loads(base64.urlsafe_b64decode(argument + "=" * (-len(argument) % 4)))
    assert sent == {"argv": ["echo", "hi"], "datalake_names": "ds.000001."}

    # The submission's settings, shared by its jobs: the job's names are not in them.
    with tarfile.open(fileobj=io.BytesIO(submission_sandbox(job, GRID.images).data)) as tar:
        member = tar.extractfile("concordia-job.json")
        assert member is not None
        config = json.load(member)
    assert config["datalake"] == {**lake, "outputs": ["*.root"]}

    plain = parse_jdl(GRID.describe(spec(outputs=["*.root"])))
    assert plain["OutputSandbox"] == ["std.out", "std.err", "*.root"]
    assert "datalake" not in json.loads(
        base64.urlsafe_b64decode(plain["Arguments"] + "=" * (-len(plain["Arguments"]) % 4))
    )
