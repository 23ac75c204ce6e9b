"""/applications: the applications a user can run."""

from __future__ import annotations

from fastapi import APIRouter

from concordia.core.application import ApplicationDef
from concordia.web.deps import CurrentUser, PlatformDep

router = APIRouter(tags=["applications"])


@router.get("/applications")
async def list_applications(platform: PlatformDep, _user: CurrentUser) -> list[ApplicationDef]:
    return list(platform.catalog.apps.values())


@router.get("/applications/{name}")
async def get_application(name: str, platform: PlatformDep, _user: CurrentUser) -> ApplicationDef:
    return platform.catalog.get(name)
