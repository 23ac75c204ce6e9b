"""The REST API fuzzed from its own OpenAPI document (schemathesis), in-process, as a real
user holding a real submission: no 5xx, every status documented, every body as declared."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation import GenerationMode
from schemathesis.python import asgi

from concordia.web.app import create_app
from tests.conftest import make_settings, seed_images
from tests.database import ON_POSTGRESQL

pytestmark = [pytest.mark.slow, pytest.mark.sql]

# Per operation: about 30 operations stay well within two minutes on two cores. The
# PostgreSQL pass looks for what the engine answers differently (values out of a column's
# range, text it refuses), which the first examples of each operation reach.
MAX_EXAMPLES = 40 if ON_POSTGRESQL else 100


def invalid_data_rejected(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """schemathesis's negative_data_rejection where the invalid part is not the query
    string: FastAPI reads a query as its framework does (the last of a repeated name;
    "0.0" is the integer 0), which the check takes for accepting invalid data."""
    negated = {
        location
        for location, info in (case.meta.components if case.meta else {}).items()
        if info.mode.is_negative
    }
    if ParameterLocation.QUERY in negated:
        return None
    return negative_data_rejection(ctx, response, case)


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    invalid_data_rejected,
]
# Their success needs what local mode has not: IAM (SCIM), an uploaded certificate.
NO_SUCCESS_HERE = {
    "POST /api/v1/me/scim",
    "POST /api/v1/me/credential",
    "POST /api/v1/me/proxy",
    "DELETE /api/v1/me/credential",
    "DELETE /api/v1/me/proxy",
    # 409 while the jobs rescheduled by the fuzzing run in it, 204 once they have ended.
    "DELETE /api/v1/images/{image_id}",
    # A worker node's link needs a signature only the server makes for a grid job.
    "GET /api/v1/grid/images/{image_id}/image.sqsh",
    # The seeded image is ready: there is no build to cancel, none failed to retry.
    "POST /api/v1/images/{image_id}/cancel",
    "POST /api/v1/images/{image_id}/retry",
    # No data lake here: the job has no file there (tests/integration/datalake/test_datalake.py).
    "GET /api/v1/jobs/{job_id}/datalake/{name}",
    # A grid job's upload-token link needs a signature only the server makes for the job
    # (tests/integration/datalake/test_upload_tokens.py).
    "GET /api/v1/grid/jobs/{job_uuid}/upload-token",
}


@dataclass
class Fuzzing:
    """The fuzzed user's token and the things they own: generated path parameters and
    bodies are also aimed at these, so the handlers past "not found" are fuzzed too."""

    token: str
    known: dict[str, list[Any]]
    #: Each operation's statuses, to show the requests got past sign-in to real data.
    seen: dict[str, set[int]] = field(default_factory=dict)


def test_the_api_keeps_its_documented_contract(tmp_path: Path, image_seed: Path) -> None:
    # Upload tokens issued: the issuer's /.well-known documents are answered too.
    config = seed_images(make_settings(tmp_path / "var", datalake_upload_tokens=True), image_seed)
    app = create_app(config)
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", app)  # starts its lifespan
    try:
        fuzzing = _real_data(app, config.api_token_file.read_text().strip())
        operations = [result.ok() for result in schema.get_all_operations()]
        # Deletions last, and what acts on a whole submission after what acts on one of its
        # jobs: the real job and image stay for every other operation.
        operations.sort(
            key=lambda operation: (
                operation.method.upper() == "DELETE",
                operation.path.startswith("/api/v1/submissions/{submission_id}")
                and operation.method.upper() != "GET",
            )
        )
        failures = [p for operation in operations if (p := _fuzz(operation, fuzzing)) is not None]
    finally:
        asgi.shutdown_lifespans()
    assert not failures, "\n\n".join(failures)
    assert len(fuzzing.seen) == len(operations) >= 30
    unreached = {
        label
        for label, statuses in fuzzing.seen.items()
        if label not in NO_SUCCESS_HERE and not any(200 <= s < 300 for s in statuses)
    }
    assert not unreached, f"never answered with success: {sorted(unreached)}"
    assert 401 not in set().union(*fuzzing.seen.values())


def _fuzz(operation: schemathesis.APIOperation, fuzzing: Fuzzing) -> str | None:
    """Valid and invalid requests to one operation; what went wrong, or None."""
    names = [p.name for p in operation.path_parameters]
    real = st.fixed_dictionaries(
        {name: st.sampled_from(fuzzing.known[name]) for name in names if name in fuzzing.known}
    )
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    cases = st.one_of(
        *(operation.as_strategy(mode) for mode in modes),
        *(
            real.flatmap(
                lambda fixed, mode=mode: operation.as_strategy(mode, path_parameters=fixed)
            )
            for mode in modes
            if set(names) & set(fuzzing.known)
        ),
        operation.as_strategy(GenerationMode.POSITIVE).map(_aimed),
    )
    headers = {"Authorization": f"Bearer {fuzzing.token}"}

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    @given(case=cases)
    def run(case: schemathesis.Case) -> None:
        response = case.call_and_validate(headers=headers, checks=CHECKS)
        fuzzing.seen.setdefault(operation.label, set()).add(response.status_code)

    try:
        run()
    except (Exception, FailureGroup) as exc:
        return f"{operation.label}: {exc}"
    return None


def _aimed(case: schemathesis.Case) -> schemathesis.Case:
    """A valid body naming the real application, so submissions and image selections get
    past "no application named ..." (never a forced rebuild: minutes of CPU)."""
    if isinstance(case.body, dict) and "application" in case.body:
        case.body = {**case.body, "application": "hello"}
        if "force" in case.body:
            case.body["force"] = False
    return case


def _real_data(app: Any, token: str) -> Fuzzing:
    """Jobs of `hello`: one Done with an output file, one Failed (it can be rescheduled),
    one Running (it can be killed); their submissions, one more, and the image."""
    with asgi.get_client(app) as client:
        client.headers["Authorization"] = f"Bearer {token}"

        def submit(parameters: dict[str, Any], until: set[str]) -> dict[str, Any]:
            body = {"application": "hello", "parameters": {"jobs": 1, **parameters}}
            created = client.post("/api/v1/submissions", json=body)
            assert created.status_code == 201, created.text
            job_url = f"/api/v1/jobs/{created.json()['job_ids'][0]}"
            deadline = time.monotonic() + 60
            while (job := client.get(job_url).json())["status"] not in until:
                assert time.monotonic() < deadline, job
                time.sleep(0.1)
            return dict(job)

        done = submit({"message": "fuzz"}, {"Done"})
        failed = submit({"exit_code": 3}, {"Failed"})
        running = submit({"sleep": 600}, {"Running"})  # killed by the fuzzing or at the end
        # A submission of its own for what acts on a whole one: the job operations, fuzzed
        # on the jobs above, cannot delete it first.
        whole = submit({"message": "whole"}, {"Done"})
        files = client.get(f"/api/v1/jobs/{done['id']}/outputs").json()["items"]
        assert files, "the hello job wrote no output"
    jobs = [done, failed, running]
    known = {
        "job_id": [job["id"] for job in jobs],
        "submission_id": [job["submission_id"] for job in [*jobs, whole]],
        "image_id": [done["image_id"]],
        "name": ["hello"],
        "path": [files[0]["path"]],
    }
    return Fuzzing(token=token, known=known)
