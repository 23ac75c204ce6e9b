"""/applications: the applications a user can run, and why one cannot run here."""

from __future__ import annotations

from fastapi import APIRouter

from concordia.core.application import ApplicationDef
from concordia.logic.images import unavailable_reason
from concordia.logic.platform import Platform
from concordia.web.deps import CurrentUser, PlatformDep

router = APIRouter(tags=["applications"])


class ApplicationView(ApplicationDef):
    #: Why its image cannot be built here (e.g. a registered-only source not configured).
    unavailable: str | None = None


def _view(platform: Platform, app: ApplicationDef) -> ApplicationView:
    return ApplicationView(**dict(app), unavailable=unavailable_reason(platform, app))


@router.get("/applications")
async def list_applications(platform: PlatformDep, _user: CurrentUser) -> list[ApplicationView]:
    return [_view(platform, app) for app in platform.catalog.apps.values()]


@router.get("/applications/{name}")
async def get_application(name: str, platform: PlatformDep, _user: CurrentUser) -> ApplicationView:
    return _view(platform, platform.catalog.get(name))
