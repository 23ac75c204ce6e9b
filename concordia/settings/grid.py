"""Settings of the grid: the DiracX backend and where grid jobs get their images."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings

from concordia.settings.base import CONFIG

#: Where grid worker nodes get images, in the order they try them.
GridImageTarget = Literal["unpacked", "registry", "https"]
GRID_IMAGE_TARGETS: list[GridImageTarget] = ["unpacked", "registry", "https"]


class GridSettings(BaseSettings):
    """DiracX (DIRAC's REST API): the grid. No URL: no diracx backend."""

    model_config = CONFIG

    diracx_url: str = Field(
        default="",
        description="DiracX's URL, e.g. https://diracx.example.org; empty: no diracx backend.",
    )
    diracx_auth: Literal["service", "user"] = Field(
        default="service",
        description="service: Concordia obtains each user's tokens as a trusted service (the "
        "legacy exchange secret); user: each user connects their DiracX account once.",
    )
    diracx_legacy_secret: SecretStr = Field(
        default=SecretStr(""), description="The trusted-service exchange secret (service mode)."
    )
    diracx_client_id: str = Field(
        default="myDIRACClientID", description="DiracX's public client id (user mode)."
    )
    diracx_same_iam: bool = Field(
        default=True,
        description="User mode: DiracX signs users in at the IAM Concordia uses, so a "
        "connected DiracX account must be the user's own IAM account (its subject).",
    )
    diracx_chunk_size: int = Field(
        default=20,
        ge=1,
        # DiracX refuses a call of more than 20 JDLs from a normal user (HTTP 400): a bigger
        # chunk would fail every job in it.
        le=20,
        description="JDLs per submission call: at most 20, the most DiracX takes from a user.",
    )
    diracx_calls_at_once: int = Field(
        default=1,
        ge=1,
        le=8,
        description="Submission calls in DiracX's hands at once. One keeps a single-process "
        "DiracX busy (the next chunk is ready when it answers); more help only a DiracX "
        "with several server processes.",
    )
    diracx_poll_interval: float = Field(default=10.0, gt=0, description="Seconds between polls.")
    grid_image_targets: list[GridImageTarget] = Field(
        default_factory=lambda: list(GRID_IMAGE_TARGETS),
        description="Where a grid job's image is published before the job goes to DiracX "
        "(nodes try them in this order). unpacked: the root filesystem in the "
        "grid_unpacked_dir tree (CVMFS), run in place where a node has that path; registry: "
        "the OCI image and the SquashFS pushed to grid_registry_url; https: the "
        "SquashFS from Concordia itself (public_url) at a link signed for the job, fetched "
        "once per node.",
    )
    grid_unpacked_dir: Path | None = Field(
        default=None,
        description="The publication directory of a CVMFS repository (its stratum-0, or a "
        "tree DUCC-style tools publish): images are written there as unpacked root "
        "filesystems. None: no unpacked target. Only images built without operator-provided "
        "sources (e.g. CORSIKA's registered-only tarball) go there: CVMFS is world-readable.",
    )
    grid_unpacked_node_path: str = Field(
        default="",
        description="Where worker nodes see grid_unpacked_dir, e.g. /cvmfs/<repository>; "
        "empty: the same path.",
    )
    grid_registry_url: str = Field(
        default="",
        description="An OCI registry (distribution, Harbor) images are pushed to before their "
        "jobs go to DiracX, e.g. https://registry.example.org: the OCI image as "
        "<prefix>/<vo>/<application>:<image id>, the SquashFS as an artifact at "
        "<prefix>/<vo>/<application>/squashfs:<image id>. Empty: no registry target. Without "
        "credentials only images built without operator-provided sources are pushed.",
    )
    grid_registry_prefix: str = Field(
        default="concordia",
        description="The repository path images go under in the registry (a Harbor project).",
    )
    grid_registry_username: str = Field(
        default="", description="The registry's user (basic auth, e.g. a Harbor robot account)."
    )
    grid_registry_password: SecretStr = Field(
        default=SecretStr(""), description="The password of grid_registry_username."
    )
    grid_registry_token: SecretStr = Field(
        default=SecretStr(""),
        description="A bearer token the registry takes instead of a user and password.",
    )
    grid_image_link_hours: float = Field(
        default=72,
        gt=0,
        description="How long a job's signed image link works (it must outlast the job's "
        "wait in DiracX's queue); the job must also still be waiting or running.",
    )
    grid_apptainer_dirs: list[str] = Field(
        default_factory=list,
        description="Directories on worker nodes to look for apptainer in after PATH and "
        "OSG's CVMFS location (/cvmfs/oasis.opensciencegrid.org/mis/apptainer/current/bin).",
    )
    grid_image_cache: str = Field(
        default="",
        description="The image cache directory on worker nodes (shared by a node's jobs); "
        "empty: /var/tmp, else /tmp (the node's CONCORDIA_NODE_IMAGE_CACHE wins).",
    )
    diracx_max_output_bytes: int = Field(
        default=1 << 30, ge=1 << 20, description="An output sandbox larger is refused."
    )
