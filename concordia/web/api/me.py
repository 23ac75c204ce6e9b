"""/me: who the caller is and what the platform knows of them."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from concordia.web.deps import CurrentUser, PlatformDep

router = APIRouter(tags=["identity"])


class BackendInfo(BaseModel):
    name: str
    isolated: bool
    isolation_problem: str | None
    #: The container runtime of jobs in images, and why not the others.
    runtime: str


class Me(BaseModel):
    username: str
    display_name: str
    auth: str
    mode: str
    vos: list[str]
    certificate_dn: str | None
    proxy: str | None
    backends: list[BackendInfo]


@router.get("/me")
async def me(platform: PlatformDep, user: CurrentUser) -> Me:
    return Me(
        username=user.username,
        display_name=user.display_name,
        auth=user.auth,
        mode="local",
        vos=[],
        certificate_dn=None,
        proxy=None,
        backends=[
            BackendInfo(
                name=n,
                isolated=b.isolated,
                isolation_problem=b.isolation_problem,
                runtime=b.runtime_summary,
            )
            for n, b in platform.backends.items()
        ],
    )
