"""The JSON API, version 1: thin adapters from HTTP to the logic layer."""

from fastapi import APIRouter

from concordia.web.api import applications, events, grid, images, jobs, me, submissions

router = APIRouter(prefix="/api/v1")
for module in (applications, submissions, jobs, images, me, events, grid):
    router.include_router(module.router)
