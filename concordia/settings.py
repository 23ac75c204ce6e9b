"""The one Settings object: environment (CONCORDIA_*), an optional TOML file, embedded defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

#: The applications shipped with Concordia live beside the package in the source tree.
SHIPPED_APPLICATIONS = Path(__file__).resolve().parent.parent / "applications"


class Card(BaseModel):
    """A service or archive on the home page (ESAP's cards)."""

    title: str = Field(description="Its name on the card.")
    description: str = Field(description="A sentence or two under the name.")
    url: str = Field(description="Where the card leads: a page of Concordia or an https:// URL.")
    logo: str = Field(
        default="",
        description="A file under the web static folder, e.g. logos/rucio.svg; empty: the "
        "title's initial.",
    )

    @property
    def external(self) -> bool:
        return self.url.startswith(("http://", "https://"))


DEFAULT_CARDS = [
    Card(
        title="DIRAC",
        description="Containerised jobs on the grid: pick an application, configure its "
        "container, submit a batch of jobs, watch them and get the results.",
        url="/concordia",
        logo="logos/dirac.svg",
    ),
    Card(
        title="WSRT-Apertif",
        description="Apertif surveys: imaging and time-domain data of the Westerbork "
        "Synthesis Radio Telescope.",
        url="https://www.astron.nl/telescopes/wsrt-apertif/",
    ),
    Card(
        title="ASTRON VO",
        description="The ASTRON Virtual Observatory: image surveys in FITS, served through "
        "IVOA standards.",
        url="https://vo.astron.nl/",
    ),
    Card(
        title="Zooniverse",
        description="People-powered research: volunteers classify data for science projects.",
        url="https://www.zooniverse.org/",
    ),
    Card(
        title="Rucio",
        description="Scientific data management: the ESCAPE data lake's files and replicas.",
        url="https://rucio.cern.ch/",
    ),
    Card(
        title="Zenodo",
        description="Open science repository: publish and find data, software and images.",
        url="https://zenodo.org/",
    ),
]


#: Image builders in their default order of preference, and the formats a build can make.
Builders = Literal["apptainer", "mmdebstrap", "podman"]
ImageFormats = Literal["squashfs", "oci"]
#: Where grid worker nodes get images, in the order they try them.
GridImageTarget = Literal["unpacked", "registry", "https"]
GRID_IMAGE_TARGETS: list[GridImageTarget] = ["unpacked", "registry", "https"]


class SourceFile(BaseModel):
    """A file the operator provides for image builds (e.g. CORSIKA's registered-only tarball)."""

    url: str = Field(description="http(s):// URL or a path on this machine.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Its checksum, checked at build.")


class VoConfig(BaseModel):
    """A collaboration Concordia recognises, and the IAM groups that make someone a member."""

    title: str = Field(description="As people write it, e.g. KM3NeT.")
    groups: list[str] = Field(
        description="IAM group paths (e.g. /escape/cta); members of a subgroup are members too."
    )
    dirac_group: str = Field(
        default="", description="The DIRAC group its jobs run under; empty: <vo>_user."
    )


#: ESCAPE's IAM: the experiments are subgroups of /escape (configuration, not code).
DEFAULT_VOS = {
    "escape": VoConfig(title="ESCAPE", groups=["/escape"]),
    "cta": VoConfig(title="CTA", groups=["/escape/cta"]),
    "km3net": VoConfig(title="KM3NeT", groups=["/escape/km3net"]),
}

ProxySource = Literal["iam", "upload"]

#: Keys of a field's json_schema_extra read by the configuration reference (`concordia config
#: reference`): what to print as a default that depends on the machine (never its value here),
#: and a setting read from the environment only.
DEFAULT_TEXT = "default_text"
ENV_ONLY = "env_only"


class Settings(BaseSettings):
    """Everything configurable. Every default is the embedded one (SQLite, local backend)."""

    model_config = SettingsConfigDict(env_prefix="CONCORDIA_", extra="forbid")

    config_file: Path | None = Field(
        default=None,
        description="Optional TOML file with any of these settings (read from the environment "
        "only: a key in the file itself means nothing).",
        json_schema_extra={ENV_ONLY: True},
    )
    data_dir: Path = Field(
        default=Path("var"),
        description="Database, job directories, images, keys and tokens; a relative path is "
        "taken from the working directory at start.",
    )
    database_url: str = Field(
        default="", description="SQLAlchemy async URL; empty means SQLite in the data dir."
    )
    host: str = Field(
        default="127.0.0.1",
        description="Address the server listens on (0.0.0.0: every interface).",
    )
    port: int = Field(default=8000, description="TCP port the server listens on.")
    public_url: str = Field(
        default="",
        description="URL users open; empty: http://host:port. An https:// URL makes the "
        "session cookie Secure; IAM and DiracX send users back to it.",
    )
    request_read_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a client may take to send a request's headers (from connecting, "
        "or from the end of its previous response: then the connection is closed) and each "
        "part of a request body (then the answer is 408).",
    )
    applications_dir: Path = Field(
        default=SHIPPED_APPLICATIONS,
        description="Folder of the application definitions (*.yaml).",
        json_schema_extra={DEFAULT_TEXT: "the applications/ folder of the source tree"},
    )

    local_user: str = Field(
        default="local",
        description="The user of local mode (no issuer): a member of every configured VO.",
    )

    # IAM (OpenID Connect). No issuer: local mode, a one-time sign-in link at start.
    oidc_issuer: str = Field(
        default="",
        description="The IAM (OpenID Connect) issuer people sign in at, e.g. "
        "https://iam-escape.cloud.cnaf.infn.it/; empty: local mode.",
    )
    oidc_client_id: str = Field(
        default="",
        description="The IAM client of the web sign-in (authorization code flow); needed with "
        "oidc_issuer.",
    )
    oidc_client_secret: SecretStr = Field(
        default=SecretStr(""),
        description="That client's secret (token calls and IAM's managed proxies); empty: "
        "a public client.",
    )
    oidc_scopes: list[str] = Field(
        default_factory=lambda: ["openid", "profile", "email", "offline_access", "wlcg.groups"],
        description="Asked at sign-in; scim:read and proxy:generate are added when enabled.",
    )
    oidc_audience: str = Field(
        default="",
        description="The aud IAM access tokens must carry: the web sign-in and `concordia "
        "login` ask IAM for tokens for it. Empty: not checked (tokens must then be issued to "
        "Concordia's own clients).",
    )
    oidc_cli_client_id: str = Field(
        default="",
        description="A public IAM client with the device flow, for `concordia login`; "
        "empty: the CLI cannot sign in with IAM.",
    )
    oidc_scim_scope: bool = Field(
        default=False, description="Ask for scim:read (IAM before 1.10 needs it for /scim/Me)."
    )
    oidc_http_timeout: float = Field(default=10.0, gt=0, description="Seconds per call to IAM.")
    api_token_trust_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How long a web process goes on trusting a bearer token it has checked "
        "(a Concordia API token or an IAM access token), without checking it again (never "
        "past the token's expiry): a change of the user's groups shows after it. 0: every "
        "request checks the token.",
    )
    vos: dict[str, VoConfig] = Field(
        default_factory=lambda: dict(DEFAULT_VOS),
        description="The VOs recognised, by name, from the IAM groups of the user's token.",
    )

    cli_tokens_file: Path = Field(
        default_factory=lambda: Path.home() / ".config" / "concordia" / "tokens.json",
        description="Where `concordia login` keeps the CLI's IAM tokens (0600), per server.",
        json_schema_extra={DEFAULT_TEXT: "~/.config/concordia/tokens.json"},
    )

    # Proxies.
    proxy_sources: list[ProxySource] = Field(
        default_factory=lambda: list[ProxySource](["upload"]),
        description="Where proxies come from, in order: iam (IAM's managed proxy: asks for "
        "the proxy:generate scope), upload (signed from the user's uploaded certificate). A "
        "source whose proxy is shorter than asked gives way to the next; if none gives the "
        "lifetime asked, the longest proxy is kept and the user is told why it is shorter.",
    )
    proxy_lifetime_hours: float = Field(default=48, gt=0, description="Of a new proxy.")
    proxy_min_lifetime_hours: float = Field(
        default=8,
        ge=0,
        description="Left on a proxy before a submission that needs one (more if a job may "
        "run longer). With iam as the only proxy source it must be under "
        "proxy_iam_max_lifetime_hours.",
    )
    proxy_iam_max_lifetime_hours: float = Field(
        default=12,
        gt=0,
        description="The longest managed proxy your IAM gives (its proxy certificate maximum "
        "lifetime, 12 h unless its operators changed it).",
    )
    proxy_dirac_group: bool = Field(
        default=False, description="Write the VO's DIRAC group into signed proxies."
    )
    max_credential_bytes: int = Field(
        default=64 * 1024, ge=1024, description="An uploaded certificate file larger is refused."
    )
    encryption_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Fernet keys for secrets at rest, newest first (older ones still decrypt); "
        "empty: a key generated in the data dir.",
    )
    cards: list[Card] = Field(
        default_factory=lambda: list(DEFAULT_CARDS),
        description="The home page's services.",
        json_schema_extra={DEFAULT_TEXT: ", ".join(card.title for card in DEFAULT_CARDS)},
    )

    # The local backend.
    local_slots: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        description="Jobs the local backend runs at once.",
        json_schema_extra={DEFAULT_TEXT: "the number of CPU cores"},
    )
    local_isolation: Literal["auto", "bwrap", "none"] = Field(
        default="auto",
        description="bwrap: jobs run under bubblewrap or the server does not start; auto: "
        "bubblewrap if its probe passes, else jobs run without isolation (and say so); none: "
        "never isolated.",
    )
    local_runtime: Literal["auto", "apptainer", "bwrap", "podman"] = Field(
        default="auto",
        description="What runs jobs in their images. auto: apptainer (or singularity) if "
        "installed, else bubblewrap if its probe passes, else podman if a probe run works; "
        "with local_isolation = none, auto chooses none.",
    )
    local_wall_time_factor: float = Field(
        default=2.0, gt=0, description="Wall-clock limit = factor x the job's CPU time."
    )
    local_memory_mb: int = Field(
        default=4096,
        ge=0,
        description="Memory of a job, its processes and its files in /tmp and /dev/shm together "
        "(a cgroup, where writable); 0: none. An application's limits.memory_mb replaces it.",
    )
    local_max_processes: int = Field(
        default=1024,
        ge=0,
        description="Processes (threads included) a job may have at once (a pids cgroup, else "
        "RLIMIT_NPROC of the job's user); 0: none. An application's limits.processes replaces it.",
    )
    local_tmp_mb: int = Field(
        default=512,
        ge=0,
        description="Size of each of a sandboxed job's /tmp and /dev/shm (tmpfs; also counted in "
        "its memory); 0: no size of its own. An application's limits.tmp_mb replaces it.",
    )
    local_work_mb: int = Field(
        default=10240,
        ge=0,
        description="Bytes a job may keep in its work directory (no file above it; the whole "
        "directory is measured while the job runs); 0: none. An application's limits.work_mb "
        "replaces it.",
    )
    local_keep_workdir: bool = Field(
        default=False, description="Keep a finished job's work directory (for debugging)."
    )
    kill_grace_seconds: float = Field(
        default=5.0, ge=0, description="Seconds between a kill's SIGTERM and its SIGKILL."
    )

    # Images.
    image_builders: list[Builders] = Field(
        default_factory=lambda: list(get_args(Builders)),
        description="Builders to probe at start, in order of preference.",
    )
    image_formats: list[ImageFormats] = Field(
        default_factory=lambda: list(get_args(ImageFormats)),
        description="What a build produces besides the rootfs jobs run on here.",
    )
    image_build_timeout: float = Field(default=3600, gt=0, description="Seconds per build.")
    image_stage_cache_gb: float = Field(
        default=20,
        ge=0,
        description="Disk the cache of build stages may take (GB): a recipe's base system and "
        "its pip layer, reused by the next image that shares them (another build argument, "
        "other steps); the least recently used go first. 0: no cache.",
    )
    images_shared_in_vo: bool = Field(
        default=False,
        description="Members of a VO see (read-only) the images its other members asked for; "
        "off: each user sees only the images they asked for themselves.",
    )
    image_podman_bases: dict[str, str] = Field(
        default_factory=dict,
        description="The podman builder's base image of each Debian suite (suite -> image "
        "reference, already pulled or imported into podman's storage: never pulled by builds); "
        "without one the podman builder is not used.",
    )
    sources: dict[str, SourceFile] = Field(
        default_factory=dict, description="Operator-provided build inputs by name (corsika)."
    )

    # DiracX (DIRAC's REST API): the grid. No URL: no diracx backend.
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

    # The data lake (ESCAPE's Rucio): large results stored there. No URL: no data lake.
    datalake_url: str = Field(
        default="",
        description="The Rucio server's URL, e.g. https://rucio.example.org; empty: no data "
        "lake (every output comes back through the sandbox).",
    )
    datalake_auth_url: str = Field(
        default="", description="Rucio's authentication server; empty: datalake_url."
    )
    datalake_account: str = Field(
        default="",
        description="The Rucio service account Concordia uploads with (only into the scope of "
        "the user a job belongs to).",
    )
    datalake_password: SecretStr = Field(
        default=SecretStr(""), description="The password of datalake_account (userpass)."
    )
    datalake_verify: bool | str = Field(
        default=True,
        description="Check Rucio's TLS certificate: true, false, or the path of a CA bundle.",
    )
    datalake_rse: str = Field(
        default="", description="The RSE data go to unless a submission names another."
    )
    datalake_rses: list[str] = Field(
        default_factory=list,
        description="The RSEs users may choose; empty: datalake_rse alone.",
    )
    datalake_scope: str = Field(
        default="user.{account}",
        description="The scope a user's data go to: {account} is their Rucio account (their "
        "IAM username); an operator may name a VO scope instead.",
    )
    datalake_sandbox_max_bytes: int = Field(
        default=10 * 1024 * 1024,
        ge=0,
        description="A grid job's output larger than this goes to the data lake, never "
        "through the sandbox (DIRAC's own limit is 10 MB).",
    )

    default_backend: str = Field(default="local", description="local or diracx.")

    # The reconciler.
    max_reschedules: int = Field(default=3, ge=0, description="As DIRAC's MaxRescheduling.")
    poll_interval: float = Field(default=5.0, gt=0, description="Seconds between backend polls.")

    # Users' shares.
    max_queued_jobs_per_user: int = Field(
        default=5000,
        ge=0,
        description="Jobs one user may have not yet over (Received to Completing, on any "
        "backend), counted at each submission: one that would go over is refused (429) and "
        "creates nothing. 0: no limit.",
    )
    max_running_jobs_per_user: int = Field(
        default=0,
        ge=0,
        description="Jobs of one user a backend with slots (local) holds at once, over all "
        'workers; the user\'s others wait ("Waiting: user limit of N running jobs"). 0: no '
        "limit: the slots are shared round-robin between the users who wait, and one user "
        "alone may use them all.",
    )

    # Uploads and downloads.
    max_log_chunk: int = Field(
        default=1 << 20, ge=1024, description="Bytes of a log one read returns at the most."
    )
    max_request_bytes: int = Field(
        default=1 << 20, ge=64 * 1024, description="Any request body larger is refused (413)."
    )
    max_output_files: int = Field(
        default=10_000,
        ge=1,
        description="Files a local job may leave as outputs (besides std.out and std.err); "
        "more: collection stops and the job fails saying so.",
    )
    max_output_bytes: int = Field(
        default=20 << 30,
        ge=1 << 20,
        description="Bytes a local job may leave as outputs; more: collection stops and the "
        "job fails saying so.",
    )
    max_zip_bytes: int = Field(
        default=4 << 30,
        ge=1 << 20,
        description="Outputs larger in all are not zipped (413): their files are downloaded "
        "one by one.",
    )
    # Heavy work runs on a few threads of its own per kind, never on the pool every request
    # shares; one user holds at most so many of them at once (more: 429).
    zip_threads: int = Field(default=4, ge=1, description="Zip downloads streamed at once.")
    zip_per_user: int = Field(
        default=2, ge=1, description="Zip downloads one user may stream at once."
    )
    listing_threads: int = Field(default=4, ge=1, description="Output listings made at once.")
    listing_per_user: int = Field(
        default=4, ge=1, description="Output listings one user may ask for at once."
    )
    credential_threads: int = Field(
        default=2, ge=1, description="Uploaded credentials opened at once."
    )
    credential_per_user: int = Field(
        default=1, ge=1, description="Uploaded credentials one user may have opened at once."
    )
    max_event_streams_per_user: int = Field(
        default=10,
        ge=1,
        description="Open GET /api/v1/events streams one user may hold in one server process; "
        "one more is refused (429).",
    )

    # Operating: logs and metrics.
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="How `concordia serve` logs to stderr: text lines for a console, or one "
        "JSON object per line (time, level, logger, message, request_id; access lines add "
        "method, path, status, duration_ms) for a log collector.",
    )
    metrics_enabled: bool = Field(
        default=True,
        description="Serve Prometheus metrics at /metrics (job counts and latencies, no "
        "user data); off: 404.",
    )
    metrics_token: SecretStr = Field(
        default=SecretStr(""),
        description="If set, /metrics asks for `Authorization: Bearer <this token>`; empty: "
        "open to whoever reaches the server.",
    )
    worker_metrics_port: int = Field(
        default=8001,
        ge=0,
        le=65535,
        description="TCP port on which `concordia worker` serves its own /metrics (its "
        "reconciler rounds and image builds; the web processes serve theirs), on the address "
        "of `host`, with the metrics token if set; 0: none. Several workers on one host need "
        "one port each: one whose port is taken runs without.",
    )
    worker_absence_seconds: float = Field(
        default=60.0,
        gt=0,
        description="/readyz?workers=true answers 503 once no worker has held its lease for "
        "this long (a worker restarting takes a few seconds), as seen by the process asked.",
    )

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        # Absolute from here on: jobs run in other working directories (bwrap, subprocesses).
        self.data_dir = self.data_dir.absolute()
        self.applications_dir = self.applications_dir.absolute()
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{self.data_dir / 'concordia.db'}"
        if not self.public_url:
            self.public_url = f"http://{self.host}:{self.port}"
        self.oidc_issuer = self.oidc_issuer.rstrip("/")
        if self.datalake_url:
            self.datalake_url = self.datalake_url.rstrip("/")
            self.datalake_auth_url = (self.datalake_auth_url or self.datalake_url).rstrip("/")
            if not self.datalake_rse:
                raise ValueError("datalake_rse is needed with datalake_url")
            if not self.datalake_rses:
                self.datalake_rses = [self.datalake_rse]
            elif self.datalake_rse not in self.datalake_rses:
                self.datalake_rses = [self.datalake_rse, *self.datalake_rses]
        if self.oidc_issuer and not self.oidc_client_id:
            raise ValueError("oidc_client_id is needed with oidc_issuer")
        iam_only = set(self.proxy_sources) == {"iam"}
        if iam_only and self.proxy_min_lifetime_hours >= self.proxy_iam_max_lifetime_hours:
            # Said at start: else every submission needing a proxy is refused.
            raise ValueError(
                f"proxy_min_lifetime_hours ({self.proxy_min_lifetime_hours:g}) must be under "
                f"proxy_iam_max_lifetime_hours ({self.proxy_iam_max_lifetime_hours:g}) when "
                "IAM's managed proxies are the only proxy source: no proxy of IAM's could "
                "serve a submission. Lower it, or add upload to proxy_sources."
            )
        return self

    @property
    def datalake_enabled(self) -> bool:
        return bool(self.datalake_url)

    @property
    def iam_mode(self) -> bool:
        return bool(self.oidc_issuer)

    def login_scopes(self) -> list[str]:
        extra = ["scim:read"] * self.oidc_scim_scope + ["proxy:generate"] * (
            "iam" in self.proxy_sources
        )
        return list(dict.fromkeys([*self.oidc_scopes, *extra]))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file named by CONCORDIA_CONFIG_FILE ranks below explicit values and env.
        toml_path = os.environ.get("CONCORDIA_CONFIG_FILE")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        # Secrets systemd hands over (LoadCredential=CONCORDIA_<NAME>:<file>): files readable
        # by the service alone, never by its group (its jobs' and builds' processes).
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        if credentials:
            sources.append(SecretsSettingsSource(settings_cls, secrets_dir=credentials))
        if toml_path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(toml_path)))
        return tuple(sources)

    def make_data_dir(self) -> Path:
        """Create the data dir and its jobs directory. Their files are private (a server's
        umask is 077), but the sandboxes of jobs, which run as another uid, must pass through
        both to their work directory and image: 0711, set whatever the umask."""
        for path in (self.data_dir, self.jobs_dir):
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o711)
        return self.data_dir

    # Paths derived from the data dir.
    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def api_token_file(self) -> Path:
        return self.data_dir / "api-token"

    @property
    def encryption_key_file(self) -> Path:
        return self.data_dir / "encryption-key"
