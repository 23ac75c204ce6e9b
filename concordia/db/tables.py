"""The database tables (SQLAlchemy 2): users and their secrets, tokens, applications in use,
submissions, jobs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from concordia.core.image_status import ImageStatus
from concordia.core.states import STATUS_TEXT_MAX

# Stable constraint names, so Alembic migrations work the same on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every database (SQLite drops the zone otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON, list[Any]: JSON}  # noqa: RUF012


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(128), unique=True)
    display_name: Mapped[str] = mapped_column(String(STATUS_TEXT_MAX), default="")
    email: Mapped[str] = mapped_column(String(STATUS_TEXT_MAX), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: An IAM account: its issuer and subject, one user each (None for local users).
    issuer: Mapped[str | None] = mapped_column(String(256), default=None)
    subject: Mapped[str | None] = mapped_column(String(256), default=None)
    #: IAM groups (/escape/cta) at the last sign-in or token seen.
    groups: Mapped[list[Any]] = mapped_column(default=list)
    #: The last reading of IAM's /scim/Me (logic.accounts.ScimReading), or {}.
    scim: Mapped[dict[str, Any]] = mapped_column(default=dict)

    __table_args__ = (Index("ix_users_issuer_subject", "issuer", "subject", unique=True),)


class UserSecret(Base):
    """A user's secret, encrypted (auth.vault): IAM tokens, an uploaded credential, a proxy.
    ``info`` holds what may be shown (DN, expiry, source); never the secret."""

    __tablename__ = "user_secrets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # iam_tokens | credential | proxy
    ciphertext: Mapped[str] = mapped_column(Text)
    info: Mapped[dict[str, Any]] = mapped_column(default=dict)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("user_id", "kind", name="uq_user_secrets_user_kind"),)


class ApiToken(Base):
    """Bearer tokens, stored as sha256 digests; a login token is single use."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16), default="api")  # api | login
    name: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    used_at: Mapped[datetime | None] = mapped_column(default=None)


class BrowserSession(Base):
    """A browser's session: its cookie holds only a random id, stored here as a sha256
    digest. Signing out deletes the row, so a copy of the cookie ends with it; the IAM
    tokens of the sign-in belong to the row (vault ciphertext) and go with it."""

    __tablename__ = "browser_sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    #: None while a sign-in is under way (the OIDC state waits for IAM's redirect back).
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), default=None, index=True
    )
    #: What the pages keep between requests: CSRF token, names shown, flash, sign-in state.
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    iam_tokens: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class Application(Base):
    """An application definition as it was when first used: old jobs keep their definition."""

    __tablename__ = "applications"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    definition: Mapped[dict[str, Any]] = mapped_column()
    first_used: Mapped[datetime] = mapped_column(default=utcnow)


class Image(Base):
    __tablename__ = "images"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the recipe
    application: Mapped[str] = mapped_column(String(64), index=True)
    build_args: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default=ImageStatus.BUILDING.value)
    builder: Mapped[str] = mapped_column(Text, default="")
    formats: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: Why the last build failed (its log has the details); empty otherwise.
    error: Mapped[str] = mapped_column(Text, default="")
    built_at: Mapped[datetime | None] = mapped_column(default=None)
    rootfs_size: Mapped[int] = mapped_column(BigInteger, default=0)


class ImageUser(Base):
    """Who asked for an image (or submitted jobs that run in it), under which VO: an image
    is content-addressed and shared by all who ask, but seen only by them (and, with
    images_shared_in_vo, read-only by members of their VOs)."""

    __tablename__ = "image_users"
    image_id: Mapped[str] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    #: One of the user's VOs when they asked ("" if they had none).
    vo: Mapped[str] = mapped_column(String(64), primary_key=True, default="")
    asked_at: Mapped[datetime] = mapped_column(default=utcnow)


class Submission(Base):
    __tablename__ = "submissions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    application_id: Mapped[int] = mapped_column(ForeignKey("applications.id"))
    application: Mapped[str] = mapped_column(String(64))
    parameters: Mapped[dict[str, Any]] = mapped_column()
    build_args: Mapped[dict[str, Any]] = mapped_column(default=dict)
    backend: Mapped[str] = mapped_column(String(32))
    job_count: Mapped[int] = mapped_column(Integer)
    vo: Mapped[str] = mapped_column(String(64), default="")
    group: Mapped[str] = mapped_column(String(128), default="")
    image_id: Mapped[str | None] = mapped_column(ForeignKey("images.id"), default=None, index=True)
    #: Where its data outputs go in the data lake (Rucio); all None: not to the data lake.
    datalake_scope: Mapped[str | None] = mapped_column(String(64), default=None)
    datalake_dataset: Mapped[str | None] = mapped_column(String(250), default=None)
    datalake_rse: Mapped[str | None] = mapped_column(String(128), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    # A client-made unique value: the "sentinel" that lets many jobs go in one INSERT.
    uuid: Mapped[str] = mapped_column(String(36), unique=True, insert_sentinel=True)
    submission_id: Mapped[int] = mapped_column(ForeignKey("submissions.id"), index=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    application: Mapped[str] = mapped_column(String(64))
    index: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(256))
    parameters: Mapped[dict[str, Any]] = mapped_column()
    argv: Mapped[list[Any]] = mapped_column()
    jdl: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    minor_status: Mapped[str] = mapped_column(String(STATUS_TEXT_MAX), default="")
    application_status: Mapped[str] = mapped_column(String(STATUS_TEXT_MAX), default="")
    backend: Mapped[str] = mapped_column(String(32))
    backend_ref: Mapped[str | None] = mapped_column(String(256), default=None)
    backend_state: Mapped[dict[str, Any]] = mapped_column(default=dict)
    reschedule_count: Mapped[int] = mapped_column(Integer, default=0)
    #: The slot of the worker that took it (db.lease): its own until that worker dies.
    worker: Mapped[int | None] = mapped_column(Integer, default=None)
    exit_code: Mapped[int | None] = mapped_column(Integer, default=None)
    outputs: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    ended_at: Mapped[datetime | None] = mapped_column(default=None)

    __table_args__ = (
        # The job monitor's queries: a user's jobs by status, newest change first.
        Index("ix_jobs_owner_status_updated", "owner_id", "status", "updated_at"),
        Index("ix_jobs_owner_updated", "owner_id", "updated_at"),
        Index("ix_jobs_owner_application", "owner_id", "application"),
        # The reconciler's query: work to do per status.
        Index("ix_jobs_status_backend", "status", "backend"),
    )


class JobStatusHistory(Base):
    """Every transition, as DIRAC's LoggingInfo: time, status, minor status, source."""

    __tablename__ = "job_status_history"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16))
    minor_status: Mapped[str] = mapped_column(String(STATUS_TEXT_MAX), default="")
    application_status: Mapped[str] = mapped_column(String(STATUS_TEXT_MAX), default="")
    source: Mapped[str] = mapped_column(String(64))
    timestamp: Mapped[datetime] = mapped_column()


class DatalakeFile(Base):
    """A job's data output stored in the data lake: recorded once Rucio has it (checksum
    checked); a DID is unique there, so here too."""

    __tablename__ = "datalake_files"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    scope: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(250))
    bytes: Mapped[int] = mapped_column(BigInteger)
    adler32: Mapped[str] = mapped_column(String(8))
    rse: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(1))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("scope", "name", name="uq_datalake_files_did"),)
