"""The HTML pages (Jinja2 + htmx): thin adapters from the browser to the logic layer."""

from fastapi import APIRouter

from concordia.web.pages import (
    account,
    auth,
    concordia,
    diracx,
    home,
    images,
    jobs,
    submissions,
)

router = APIRouter(include_in_schema=False)
for module in (auth, home, account, diracx, concordia, submissions, jobs, images):
    router.include_router(module.router)
