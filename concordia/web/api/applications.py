"""/applications: the applications a user can run, and why one cannot run here."""

from __future__ import annotations

from fastapi import APIRouter

from concordia.core.application import ApplicationDef
from concordia.logic.accounts import vo_refusal
from concordia.logic.identity import Identity
from concordia.logic.image_plans import unavailable_reason
from concordia.logic.platform import Platform
from concordia.web.deps import CurrentUser, PlatformDep
from concordia.web.errors import AUTHENTICATED, documented

router = APIRouter(tags=["applications"], responses=AUTHENTICATED)


class ApplicationView(ApplicationDef):
    #: Why its image cannot be built here (e.g. a registered-only source not configured).
    unavailable: str | None = None
    #: Why the caller may not submit it (not a member of its VOs); None if they may.
    not_allowed: str | None = None


def _view(platform: Platform, app: ApplicationDef, user: Identity) -> ApplicationView:
    return ApplicationView(
        **dict(app),
        unavailable=unavailable_reason(platform.settings, platform.catalog, app),
        not_allowed=vo_refusal(user, app.vos, app.title, platform.settings),
    )


@router.get("/applications")
async def list_applications(platform: PlatformDep, user: CurrentUser) -> list[ApplicationView]:
    return [_view(platform, app, user) for app in platform.catalog.apps.values()]


@router.get("/applications/{name}", responses=documented(404))
async def get_application(name: str, platform: PlatformDep, user: CurrentUser) -> ApplicationView:
    return _view(platform, platform.catalog.get(name), user)
