"""Settings of image builds: builders, formats, the stage cache and operator-provided files."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings

from concordia.settings.base import CONFIG

#: Image builders in their default order of preference, and the formats a build can make.
Builders = Literal["apptainer", "mmdebstrap", "podman"]
ImageFormats = Literal["squashfs", "oci"]


class SourceFile(BaseModel):
    """A file the operator provides for image builds (e.g. CORSIKA's registered-only tarball)."""

    url: str = Field(description="http(s):// URL or a path on this machine.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Its checksum, checked at build.")


class ImageSettings(BaseSettings):
    """How images are built and who sees them."""

    model_config = CONFIG

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
