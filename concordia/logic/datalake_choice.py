"""Where a submission's data go in the data lake: the user's wish checked, the names they take."""

from __future__ import annotations

import re
import secrets

from pydantic import BaseModel, ConfigDict, Field, computed_field

from concordia.core.application import ApplicationDef
from concordia.db.tables import Submission
from concordia.logic.errors import Invalid
from concordia.settings import DatalakeSettings

#: Rucio's rule for DID names (its generic schema): letters, digits, dot, dash, underscore.
DID_NAME = re.compile(r"[A-Za-z0-9._-]{1,250}")
#: And for scopes: the same characters, 25 at most.
SCOPE_NAME = re.compile(r"[A-Za-z0-9._-]{1,25}")


class DatalakeRequest(BaseModel):
    """A submission's data-lake wish: where its data go (each part optional)."""

    model_config = ConfigDict(extra="forbid")
    rse: str | None = Field(default=None, description="An RSE the server offers; default its own.")
    dataset: str | None = Field(
        default=None,
        description="The dataset's name in the user's scope; default "
        "<application>.<submission id>.<8 random hex digits>.",
    )


class DatalakeChoice(BaseModel):
    """Where a submission's data go; ``dataset`` None until the submission has its id."""

    scope: str
    rse: str
    dataset: str | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def did(self) -> str | None:
        """The dataset's DID (scope:name); None until it has its name."""
        return f"{self.scope}:{self.dataset}" if self.dataset is not None else None


def default_dataset(application: str, submission_id: int) -> str:
    """A submission's dataset unless the user names one (stored with the submission):
    readable, and unique in a scope that another installation (or this one after a new
    database) shares, numbering its submissions from 1 again: 8 random hex digits, as the
    jobs' names have their uuids'."""
    return f"{application}.{submission_id}.{secrets.token_hex(4)}"


def name_prefix(
    application: str, submission_id: int, index: int, job_uuid: str, attempt: int = 0
) -> str:
    """What a job's data outputs are named by in the scope, before each file's own name:
    readable (application, submission, job index) and unique: the jobs of one submission
    write the same file names, and another installation of Concordia (or this one after a
    new database) numbers its submissions from 1 again in a scope they share, hence the
    job's uuid. A rescheduled job's run gets r<attempt>: its bytes differ, and a DID's
    content never changes. A grid job's wrapper is given it and names its files alike."""
    run = f"{index}" if not attempt else f"{index}r{attempt}"
    return f"{application}.{submission_id}.{run}.{job_uuid[:8]}."


def file_name(
    application: str,
    submission_id: int,
    index: int,
    job_uuid: str,
    relative: str,
    attempt: int = 0,
) -> str:
    """A data output's name in the scope: the job's prefix, then its path under outputs/."""
    prefix = name_prefix(application, submission_id, index, job_uuid, attempt)
    return prefix + relative.replace("/", "_")


def user_scope(settings: DatalakeSettings, username: str) -> str:
    """The user's scope, by the operator's template (user.{account})."""
    return settings.datalake_scope.format(account=username)


def choose(
    settings: DatalakeSettings,
    app: ApplicationDef,
    username: str,
    wish: DatalakeRequest | None,
    *,
    given: bool,
) -> DatalakeChoice | None:
    """Where a submission's data go; None: not to the data lake. Not ``given``: the
    application's default. Raises Invalid naming the field. No I/O."""
    if not given:
        if not (settings.datalake_enabled and app.datalake and app.datalake.default):
            return None
        wish = DatalakeRequest()
    if wish is None:  # an explicit null: no data lake
        return None
    if not settings.datalake_enabled:
        raise Invalid("datalake", "this server has no data lake (no Rucio server configured)")
    rse = wish.rse or settings.datalake_rse
    if rse not in settings.datalake_rses:
        raise Invalid(
            "datalake.rse", f"unknown RSE {rse!r}; offered: {', '.join(settings.datalake_rses)}"
        )
    if wish.dataset is not None and not DID_NAME.fullmatch(wish.dataset):
        raise Invalid(
            "datalake.dataset",
            "a dataset name is 1 to 250 letters, digits, dots, dashes or underscores",
        )
    scope = user_scope(settings, username)
    if not SCOPE_NAME.fullmatch(scope):
        raise Invalid("datalake", f"your account cannot name a Rucio scope ({scope!r})")
    return DatalakeChoice(scope=scope, rse=rse, dataset=wish.dataset)


def stored_choice(submission: Submission) -> DatalakeChoice | None:
    if submission.datalake_rse is None or submission.datalake_scope is None:
        return None
    return DatalakeChoice(
        scope=submission.datalake_scope,
        rse=submission.datalake_rse,
        dataset=submission.datalake_dataset,
    )
