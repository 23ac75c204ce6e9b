"""Settings of the server itself: data dir, database, address, applications, home page."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings

from concordia.settings.base import CONFIG, DEFAULT_TEXT, ENV_ONLY

#: The applications shipped with Concordia live beside the package in the source tree.
SHIPPED_APPLICATIONS = Path(__file__).resolve().parents[2] / "applications"


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


class ServerSettings(BaseSettings):
    """Where the server keeps its data, where it listens and what it offers."""

    model_config = CONFIG

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

    cards: list[Card] = Field(
        default_factory=lambda: list(DEFAULT_CARDS),
        description="The home page's services.",
        json_schema_extra={DEFAULT_TEXT: ", ".join(card.title for card in DEFAULT_CARDS)},
    )

    @model_validator(mode="after")
    def _derive_server(self) -> Self:
        # Absolute from here on: jobs run in other working directories (bwrap, subprocesses).
        self.data_dir = self.data_dir.absolute()
        self.applications_dir = self.applications_dir.absolute()
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{self.data_dir / 'concordia.db'}"
        if not self.public_url:
            self.public_url = f"http://{self.host}:{self.port}"
        return self

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
