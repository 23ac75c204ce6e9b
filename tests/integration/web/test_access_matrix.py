"""Access control matrix: every route of the app (API, pages, static files) for an anonymous
client, expired tokens, the owner A, B of A's VO and C of another VO. Statuses as expected;
nothing of A's (ids, job name, log text, output bytes, DN, images) in anyone else's answers;
refused changes change nothing. The routes come from the app itself: one the matrix has no
entry for fails the test, so a new route cannot be forgotten."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from sqlalchemy import select

from concordia.db.tables import ApiToken, User, utcnow
from concordia.logic.identity import digest
from concordia.settings import Settings, VoConfig
from concordia.web.app import create_app
from tests.conftest import running_app
from tests.iam.pki import TestCA
from tests.iam.server import IamDouble
from tests.integration.auth.test_iam import IamApp, iam_settings
from tests.integration.web.test_api import wait_submission

pytestmark = pytest.mark.sql

#: Two VOs that share no group: C, of the other, is a member of nothing A is.
VOS = {
    "cta": VoConfig(title="CTA", groups=["/cta"]),
    "km3net": VoConfig(title="KM3NeT", groups=["/km3net"]),
}
ALICE, BOB, CAROL = "alice-a7", "bob-b7", "carol-c7"
SECRET = "alice-secret-5f1e9c"
RUN = 731913
PASSWORD = "alice's p12"
ANONYMOUS, EXPIRED_IAM, EXPIRED_API = "anonymous", "expired IAM token", "expired API token"
OWNER, SAME_VO, OTHER_VO = "A (owner)", "B (A's VO)", "C (other VO)"
PRINCIPALS = [ANONYMOUS, EXPIRED_IAM, EXPIRED_API, OWNER, SAME_VO, OTHER_VO]
NOT_SIGNED_IN = (ANONYMOUS, EXPIRED_IAM, EXPIRED_API)


def routes(app: FastAPI) -> set[tuple[str, str]]:
    """(method, path) of every route the app serves, included routers and mounts too (HEAD
    is Starlette's automatic twin of GET)."""
    found = set()
    for route in iter_route_contexts(app.routes):
        assert route.path is not None
        for method in route.methods or {"GET"}:  # a mount (static files) serves GET
            if method != "HEAD":  # {path:path} -> {path}, as the OpenAPI document names it
                found.add((method, re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)))
    return found


@dataclass
class World:
    """A's things, as they really exist, and everyone's way in."""

    api: httpx.AsyncClient
    bearer: dict[str, dict[str, str]]
    browsers: dict[str, httpx.AsyncClient]
    csrf: dict[str, str]
    job: dict[str, Any]
    submission: int
    image: str
    image_format: str
    output: str
    output_bytes: bytes
    p12: bytes
    dn: str
    markers: dict[str, str] = field(default_factory=dict)


@dataclass
class Case:
    """One route's request and its expected statuses. ``owner`` None: not run as A (it would
    change A's things, which the other principals' attempts must leave as they are)."""

    url: str
    owner: int | None
    same_vo: int
    other_vo: int
    not_signed_in: int = 401
    json: Any = None
    form: dict[str, str] | None = None
    files: dict[str, tuple[str, bytes]] | None = None
    #: A session form carries its browser's CSRF token (the refusal must be about whose
    #: thing it is, not a missing token); False to send none.
    csrf: bool = True
    #: A's answer must show A's things (so that their absence elsewhere means something).
    shows_a: bool = False
    #: Markers that may appear here (the form says whether a configuration's image exists:
    #: content-addressed, it is selected for whoever asks, see image_selection.select_or_build).
    allowed: frozenset[str] = frozenset()


def matrix(w: World, shared: bool) -> dict[tuple[str, str], Case]:
    job, sub, image = w.job["id"], w.submission, w.image
    # An image shared in the VO is read-only there: seen (200), not changed (403).
    seen, change = (200, 403) if shared else (404, 404)
    image_id = frozenset({"image"})
    hello_form = {"parameters.jobs": "0"}  # refused (jobs >= 1): nothing is submitted
    return {
        # Open to all.
        ("GET", "/healthz"): Case("/healthz", 200, 200, 200, 200),
        ("GET", "/readyz"): Case("/readyz", 200, 200, 200, 200),
        ("GET", "/metrics"): Case("/metrics", 200, 200, 200, 200),  # counts, never whose
        ("GET", "/api/openapi.json"): Case("/api/openapi.json", 200, 200, 200, 200),
        ("GET", "/api/docs"): Case("/api/docs", 200, 200, 200, 200),
        ("GET", "/docs/oauth2-redirect"): Case("/docs/oauth2-redirect", 200, 200, 200, 200),
        ("GET", "/api/v1/auth"): Case("/api/v1/auth", 200, 200, 200, 200),
        # A worker node's link, signed for one job: without a valid signature, nobody's.
        ("GET", "/api/v1/grid/images/{image_id}/image.sqsh"): Case(
            f"/api/v1/grid/images/{image}/image.sqsh?job=x&expires=9999999999&sig=forged",
            403, 403, 403, 403,
        ),
        # The same for a job's upload tokens (A's job is over: refused even if signed).
        ("GET", "/api/v1/grid/jobs/{job_uuid}/upload-token"): Case(
            f"/api/v1/grid/jobs/{w.job.get('uuid', 'x')}/upload-token"
            "?name=x&expires=9999999999&sig=forged",
            403, 403, 403, 403,
        ),
        # The upload-token issuer's public keys, for storages to trust it.
        ("GET", "/.well-known/openid-configuration"): Case(
            "/.well-known/openid-configuration", 200, 200, 200, 200
        ),
        ("GET", "/.well-known/jwks.json"): Case("/.well-known/jwks.json", 200, 200, 200, 200),
        ("GET", "/static"): Case("/static/concordia.css", 200, 200, 200, 200),
        ("GET", "/favicon.ico"): Case("/favicon.ico", 200, 200, 200, 200),
        ("GET", "/"): Case("/", 200, 200, 200, 200),
        ("GET", "/login"): Case("/login", 302, 302, 302, 302),
        # The API token form is local mode's: IAM mode has none.
        ("POST", "/login"): Case("/login", 404, 404, 404, 404, form={}, csrf=False),
        ("GET", "/auth/callback"): Case("/auth/callback?code=x&state=y", 401, 401, 401, 401),
        ("POST", "/logout"): Case("/logout", 403, 403, 403, 403, form={}, csrf=False),
        # The caller's own.
        ("GET", "/api/v1/me"): Case("/api/v1/me", 200, 200, 200, shows_a=True),
        ("POST", "/api/v1/me/scim"): Case("/api/v1/me/scim", 200, 200, 200),
        ("POST", "/api/v1/me/credential"): Case(
            "/api/v1/me/credential", None, 422, 422,
            files={"file": ("a.p12", w.p12)}, form={"password": PASSWORD},
        ),
        ("DELETE", "/api/v1/me/credential"): Case("/api/v1/me/credential", None, 404, 404),
        ("POST", "/api/v1/me/proxy"): Case("/api/v1/me/proxy", None, 409, 409, json={}),
        ("DELETE", "/api/v1/me/proxy"): Case("/api/v1/me/proxy", None, 404, 404),
        ("GET", "/api/v1/applications"): Case("/api/v1/applications", 200, 200, 200),
        ("GET", "/api/v1/applications/{name}"): Case("/api/v1/applications/hello", 200, 200, 200),
        ("GET", "/api/v1/builders"): Case("/api/v1/builders", 200, 200, 200),
        ("GET", "/api/v1/events"): Case("/api/v1/events", 200, 200, 200),
        ("POST", "/api/v1/submissions"): Case(
            "/api/v1/submissions", 422, 422, 422,
            json={"application": "hello", "parameters": {"jobs": 0}},
        ),
        ("GET", "/api/v1/jobs"): Case(f"/api/v1/jobs?q={RUN}", 200, 200, 200, shows_a=True),
        ("POST", "/api/v1/images"): Case(  # B asking for A's configuration: a test below
            "/api/v1/images", 404, 404, 404, json={"application": "no-such-app"}
        ),
        ("GET", "/api/v1/images"): Case("/api/v1/images", 200, 200, 200, shows_a=True),
        # A's submission, job, logs and outputs: nobody else's, whatever the VO.
        ("GET", "/api/v1/submissions/{submission_id}"): Case(
            f"/api/v1/submissions/{sub}", 200, 404, 404
        ),
        ("POST", "/api/v1/submissions/{submission_id}/kill"): Case(
            f"/api/v1/submissions/{sub}/kill", None, 404, 404
        ),
        ("POST", "/api/v1/submissions/{submission_id}/reschedule"): Case(
            f"/api/v1/submissions/{sub}/reschedule", None, 404, 404
        ),
        ("DELETE", "/api/v1/submissions/{submission_id}"): Case(
            f"/api/v1/submissions/{sub}", None, 404, 404
        ),
        ("GET", "/api/v1/submissions/{submission_id}/outputs.zip"): Case(
            f"/api/v1/submissions/{sub}/outputs.zip", 200, 404, 404
        ),
        ("GET", "/api/v1/jobs/{job_id}"): Case(f"/api/v1/jobs/{job}", 200, 404, 404, shows_a=True),
        ("GET", "/api/v1/jobs/{job_id}/logs"): Case(
            f"/api/v1/jobs/{job}/logs", 200, 404, 404, shows_a=True
        ),
        ("GET", "/api/v1/jobs/{job_id}/outputs"): Case(
            f"/api/v1/jobs/{job}/outputs", 200, 404, 404, shows_a=True
        ),
        ("GET", "/api/v1/jobs/{job_id}/outputs.zip"): Case(
            f"/api/v1/jobs/{job}/outputs.zip", 200, 404, 404
        ),
        ("GET", "/api/v1/jobs/{job_id}/outputs/{path}"): Case(
            f"/api/v1/jobs/{job}/outputs/{w.output}", 200, 404, 404, shows_a=True
        ),
        # A's job has no data-lake files here (datalake/test_datalake.py has some):
        # an empty list for A, the job not found for the others.
        ("GET", "/api/v1/jobs/{job_id}/datalake"): Case(
            f"/api/v1/jobs/{job}/datalake", 200, 404, 404
        ),
        ("GET", "/api/v1/jobs/{job_id}/datalake/{name}"): Case(
            f"/api/v1/jobs/{job}/datalake/{w.output}", 404, 404, 404
        ),
        ("POST", "/api/v1/jobs/{job_id}/kill"): Case(f"/api/v1/jobs/{job}/kill", 409, 404, 404),
        ("POST", "/api/v1/jobs/{job_id}/reschedule"): Case(
            f"/api/v1/jobs/{job}/reschedule", None, 404, 404
        ),
        ("DELETE", "/api/v1/jobs/{job_id}"): Case(f"/api/v1/jobs/{job}", None, 404, 404),
        # A's image: B's too only where shared in the VO, and read-only; never C's.
        ("GET", "/api/v1/images/{image_id}"): Case(f"/api/v1/images/{image}", 200, seen, 404),
        ("DELETE", "/api/v1/images/{image_id}"): Case(
            f"/api/v1/images/{image}", None, change, 404
        ),
        ("POST", "/api/v1/images/{image_id}/cancel"): Case(
            f"/api/v1/images/{image}/cancel", None, change, 404
        ),
        ("POST", "/api/v1/images/{image_id}/retry"): Case(
            f"/api/v1/images/{image}/retry", None, change, 404
        ),
        ("GET", "/api/v1/images/{image_id}/log"): Case(
            f"/api/v1/images/{image}/log", 200, seen, 404
        ),
        ("GET", "/api/v1/images/{image_id}/log/events"): Case(
            f"/api/v1/images/{image}/log/events", 200, seen, 404
        ),
        ("GET", "/api/v1/images/{image_id}/download/{fmt}"): Case(
            f"/api/v1/images/{image}/download/{w.image_format}", 200, seen, 404
        ),
        # Pages: the caller's own.
        ("GET", "/account"): Case("/account", 200, 200, 200, shows_a=True),
        ("POST", "/account/scim"): Case("/account/scim", 303, 303, 303, form={}),
        ("POST", "/account/credential"): Case(
            "/account/credential", None, 422, 422,
            files={"file": ("a.p12", w.p12)}, form={"password": PASSWORD},
        ),
        ("POST", "/account/credential/delete"): Case(
            "/account/credential/delete", None, 404, 404, form={}
        ),
        ("POST", "/account/proxy"): Case(
            "/account/proxy", None, 409, 409, form={"lifetime_hours": "48"}
        ),
        ("POST", "/account/proxy/delete"): Case("/account/proxy/delete", None, 404, 404, form={}),
        # No DiracX here: nobody connects an account.
        ("POST", "/account/diracx"): Case("/account/diracx", 404, 404, 404, form={}),
        ("GET", "/auth/diracx/callback"): Case("/auth/diracx/callback", 404, 404, 404),
        ("POST", "/account/diracx/disconnect"): Case(
            "/account/diracx/disconnect", None, 403, 403, form={}  # their own VO: none named
        ),
        ("GET", "/concordia"): Case("/concordia", 200, 200, 200),
        ("GET", "/concordia/{name}"): Case(
            "/concordia/hello", 200, 200, 200, allowed=image_id
        ),
        ("POST", "/concordia/{name}/check"): Case(
            "/concordia/hello/check", 200, 200, 200, form={}, csrf=False, allowed=image_id
        ),
        ("POST", "/concordia/{name}"): Case(
            "/concordia/hello", 422, 422, 422, form=hello_form, allowed=image_id
        ),
        ("GET", "/jobs"): Case(f"/jobs?q={RUN}", 200, 200, 200, shows_a=True),
        ("GET", "/jobs/table"): Case(f"/jobs/table?q={RUN}", 200, 200, 200, shows_a=True),
        ("GET", "/jobs/counts"): Case("/jobs/counts", 200, 200, 200),
        # Refused one by one: the monitor is shown again with what was refused.
        ("POST", "/jobs/bulk"): Case(
            "/jobs/bulk", None, 303, 303, form={"action": "delete", "job": str(job)}
        ),
        ("GET", "/images"): Case("/images", 200, 200, 200, shows_a=True),
        ("GET", "/images/table"): Case("/images/table", 200, 200, 200, shows_a=True),
        # Pages: A's things.
        ("GET", "/submissions/{submission_id}"): Case(f"/submissions/{sub}", 200, 404, 404),
        ("GET", "/submissions/{submission_id}/progress"): Case(
            f"/submissions/{sub}/progress", 200, 404, 404
        ),
        ("GET", "/submissions/{submission_id}/rows"): Case(
            f"/submissions/{sub}/rows", 200, 404, 404, shows_a=True
        ),
        ("POST", "/submissions/{submission_id}/{action}"): Case(
            f"/submissions/{sub}/delete", None, 404, 404, form={}
        ),
        ("GET", "/jobs/{job_id}"): Case(f"/jobs/{job}", 200, 404, 404, shows_a=True),
        ("GET", "/jobs/{job_id}/parts"): Case(
            f"/jobs/{job}/parts", 200, 404, 404, shows_a=True
        ),
        ("POST", "/jobs/{job_id}/{action}"): Case(
            f"/jobs/{job}/reschedule", None, 303, 303, form={}
        ),
        ("GET", "/images/{image_id}"): Case(f"/images/{image}", 200, seen, 404, shows_a=True),
        ("GET", "/images/{image_id}/parts"): Case(f"/images/{image}/parts", 200, seen, 404),
        ("POST", "/images/{image_id}/rebuild"): Case(
            f"/images/{image}/rebuild", None, change, 404, form={}
        ),
        ("POST", "/images/{image_id}/cancel"): Case(
            f"/images/{image}/cancel", None, change, 404, form={}
        ),
        ("POST", "/images/{image_id}/retry"): Case(
            f"/images/{image}/retry", None, change, 404, form={}
        ),
        ("POST", "/images/{image_id}/delete"): Case(
            f"/images/{image}/delete", None, change, 404, form={}
        ),
    }  # fmt: skip


def test_the_matrix_knows_every_route_and_the_openapi_document_lists_the_api(
    tmp_path: Path,
) -> None:
    """The app's own route list against the matrix: a route added without an entry fails."""
    app = create_app(Settings(data_dir=tmp_path / "var"))
    served = routes(app)
    dummy = World(
        api=httpx.AsyncClient(), bearer={}, browsers={}, csrf={}, job={"id": 1}, submission=1,
        image="0" * 64, image_format="squashfs", output="x", output_bytes=b"", p12=b"", dn="",
    )  # fmt: skip
    known = set(matrix(dummy, shared=False))
    assert served - known == set(), "routes without an entry in the access matrix"
    assert known - served == set(), "entries of the matrix for routes that are gone"
    documented = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }
    assert documented - served == set(), "documented routes the app does not serve"


# The world: A's job ran to Done, with a log line, an output file, a credential and a proxy.
@pytest.fixture(params=[False, True], ids=["images-private", "images-shared-in-vo"])
async def world(
    request: pytest.FixtureRequest, settings: Settings, iam: IamDouble
) -> AsyncIterator[tuple[World, IamApp, bool]]:
    shared: bool = request.param
    settings = iam_settings(
        settings.data_dir,
        iam,
        database_url=settings.database_url,
        vos=VOS,
        images_shared_in_vo=shared,
        datalake_upload_tokens=True,
    )
    ca = TestCA()
    cert = ca.issue_user("Alice Seven")
    iam.add_user(ALICE, groups=["/cta"], certificate=cert)
    iam.add_user(BOB, groups=["/cta"])
    iam.add_user(CAROL, groups=["/km3net"])
    async with running_app(settings) as running:
        app = IamApp(running, iam, ca)
        yield await _make_world(app, cert.pkcs12(PASSWORD)), app, shared


async def _make_world(app: IamApp, p12: bytes) -> World:
    iam, api = app.iam, app.running.client
    bearer = {
        name: {"Authorization": f"Bearer {iam.token_for(name)}"} for name in (ALICE, BOB, CAROL)
    }
    a = bearer[ALICE]
    assert (await api.post("/api/v1/me/scim", headers=a)).status_code == 200
    made = await api.post(
        "/api/v1/me/credential",
        files={"file": ("a.p12", p12)},
        data={"password": PASSWORD},
        headers=a,
    )
    assert made.status_code == 201, made.text
    assert (await api.post("/api/v1/me/proxy", json={}, headers=a)).status_code == 201
    body = {"application": "hello", "parameters": {"message": SECRET, "first_run": RUN}}
    sub = await api.post("/api/v1/submissions", json=body, headers=a)
    assert sub.status_code == 201, sub.text
    api.headers.update(a)  # wait_submission reads with the client's own headers
    done = await wait_submission(api, sub.json()["id"], timeout=120)
    del api.headers["Authorization"]
    assert done["counts"] == {"Done": 1}, done
    job = (await api.get(f"/api/v1/jobs/{done['job_ids'][0]}", headers=a)).json()
    outputs = (await api.get(f"/api/v1/jobs/{job['id']}/outputs", headers=a)).json()["items"]
    output = next(o["path"] for o in outputs if o["path"] == f"result-{RUN}.txt")
    data = (await api.get(f"/api/v1/jobs/{job['id']}/outputs/{output}", headers=a)).content
    assert SECRET.encode() in data
    log = (await api.get(f"/api/v1/jobs/{job['id']}/logs", headers=a)).json()
    assert SECRET in str(log)
    image = (await api.get(f"/api/v1/images/{done['image_id']}", headers=a)).json()
    expired = iam.mint({**iam.access_claims(ALICE), "exp": int(time.time()) - 600})
    bearer[EXPIRED_IAM] = {"Authorization": f"Bearer {expired}"}
    bearer[EXPIRED_API] = {"Authorization": f"Bearer {await _expired_api_token(app)}"}
    browsers, csrf = {}, {}
    for name in (ALICE, BOB, CAROL):
        browser = app.browser()
        assert (await app.sign_in(browser, name)).status_code == 303
        page = await browser.get("/account")
        found = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert found, page.text
        browsers[name], csrf[name] = browser, found.group(1)
    world = World(
        api=api, bearer=bearer, browsers=browsers, csrf=csrf, job=job, submission=sub.json()["id"],
        image=image["id"], image_format=next(iter(image["formats"])), output=output,
        output_bytes=data, p12=p12, dn=made.json()["dn"],
    )  # fmt: skip
    world.markers = {
        "secret": SECRET,
        "uuid": job["uuid"],
        "job name": job["name"],
        "output": output,
        "username": ALICE,
        "dn": world.dn,
        "image": image["id"],
    }
    return world


async def _expired_api_token(app: IamApp) -> str:
    """A Concordia API token of A's that expired a minute ago."""
    platform = app.running.platform
    token = "expired-api-token-of-alice"
    async with platform.writing() as session:
        alice = await session.scalar(select(User).where(User.username == ALICE))
        assert alice is not None
        session.add(
            ApiToken(
                user_id=alice.id,
                digest=digest(token),
                kind="api",
                name="expired",
                expires_at=utcnow() - timedelta(minutes=1),
            )
        )
    return token


async def snapshot(w: World) -> dict[str, Any]:
    """What A has, as A reads it: any change a refused request made shows here."""
    a, api = w.bearer[ALICE], w.api
    job = (await api.get(f"/api/v1/jobs/{w.job['id']}", headers=a)).json()
    me = (await api.get("/api/v1/me", headers=a)).json()
    image = await api.get(f"/api/v1/images/{w.image}", headers=a)
    output = await api.get(f"/api/v1/jobs/{w.job['id']}/outputs/{w.output}", headers=a)
    proxy = {k: v for k, v in (me["proxy"] or {}).items() if k != "seconds_left"}
    return {
        "job": {k: job[k] for k in ("status", "reschedule_count", "updated_at", "history")},
        "submission": (await api.get(f"/api/v1/submissions/{w.submission}", headers=a)).json(),
        "output": (output.status_code, output.content),
        "image": (image.status_code, image.json()),
        "credential": me["credential"],
        "proxy": proxy,
        "images": [i["id"] for i in (await api.get("/api/v1/images", headers=a)).json()],
    }


def client_of(w: World, principal: str, api: bool) -> tuple[httpx.AsyncClient, dict[str, str]]:
    """API calls with bearer tokens; pages in each user's browser (the not signed in ones:
    a fresh client, carrying the expired token where there is one)."""
    users = {OWNER: ALICE, SAME_VO: BOB, OTHER_VO: CAROL}
    if principal in users and not api:
        return w.browsers[users[principal]], {}
    headers = w.bearer[users.get(principal, principal)] if principal != ANONYMOUS else {}
    return w.api, headers


async def call(w: World, principal: str, method: str, case: Case) -> httpx.Response:
    api = case.url.startswith(
        ("/api/", "/healthz", "/readyz", "/metrics", "/docs/", "/.well-known/")
    )
    client, headers = client_of(w, principal, api)
    if not api and principal in NOT_SIGNED_IN:
        client = httpx.AsyncClient(transport=w.api._transport, base_url=str(w.api.base_url))
    form = dict(case.form) if case.form is not None else None
    if form is not None and case.csrf and not api:
        users = {OWNER: ALICE, SAME_VO: BOB, OTHER_VO: CAROL}
        form["csrf"] = w.csrf.get(users.get(principal, ""), "")
    request = client.build_request(
        method, case.url, headers=headers, json=case.json, data=form, files=case.files
    )
    if case.url.endswith("/events"):  # Server-Sent Events: what comes first, then away
        return await first_events(w.api._transport.app, request)  # type: ignore[attr-defined]
    return await client.send(request)


async def first_events(
    app: Any, request: httpx.Request, until: bytes = b"event: ", wait: float = 15
) -> httpx.Response:
    """An event stream's status and events until ``until`` came (or ``wait`` seconds), the
    client then leaving (httpx's ASGI transport waits for a response's end, which an event
    stream never reaches)."""
    status, body, seen = 0, bytearray(), asyncio.Event()

    async def receive() -> dict[str, Any]:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await seen.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))
            if until in body or not message.get("more_body", False):
                seen.set()

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
        "method": request.method, "scheme": "http", "path": request.url.path,
        "raw_path": request.url.raw_path, "query_string": request.url.query,
        "root_path": "", "server": ("testserver", 80), "client": ("127.0.0.1", 1),
        "headers": [(k.lower(), v) for k, v in request.headers.raw],
    }  # fmt: skip
    async with asyncio.timeout(wait + 15):
        await app(scope, receive, send)
    return httpx.Response(status, content=bytes(body), request=request)


def leaks(
    w: World, principal: str, case: Case, shared: bool, response: httpx.Response
) -> list[str]:
    """A's markers in an answer to someone else."""
    # What the caller put in the URL comes back in a "no image ..." they already knew.
    allowed = set(case.allowed) | {name for name, m in w.markers.items() if m in case.url}
    if shared and principal == SAME_VO:
        allowed.add("image")  # seen read-only by the VO, by configuration
    text = response.content.decode("latin-1")
    found = [name for name, marker in w.markers.items() if name not in allowed and marker in text]
    if w.output_bytes in response.content:
        found.append("output bytes")
    return found


def expected(case: Case, principal: str) -> int | None:
    return {OWNER: case.owner, SAME_VO: case.same_vo, OTHER_VO: case.other_vo}.get(
        principal, case.not_signed_in
    )


def cells(cases: dict[tuple[str, str], Case]) -> Iterator[tuple[str, str, Case]]:
    """Reading routes first, then the ones that try to change something (A's last of all)."""
    order = sorted(cases.items(), key=lambda item: (item[0][0] != "GET", item[0]))
    for (method, _), case in order:
        for principal in PRINCIPALS:
            yield principal, method, case


async def test_every_route_for_every_principal(world: tuple[World, IamApp, bool]) -> None:
    w, app, shared = world
    cases = matrix(w, shared)
    served = routes(app.running.client._transport.app)  # type: ignore[attr-defined]
    assert served == set(cases), served ^ set(cases)
    before = await snapshot(w)
    problems = []
    for principal, method, case in cells(cases):
        want = expected(case, principal)
        if want is None:
            continue
        response = await call(w, principal, method, case)
        where = f"{principal}: {method} {case.url}"
        if response.status_code != want:
            problems.append(f"{where} gave {response.status_code}, expected {want}")
        if principal == OWNER and case.shows_a:
            if not any(marker in response.text for marker in w.markers.values()):
                problems.append(f"{where} shows none of A's things to A")
        elif principal != OWNER:
            problems += [
                f"{where} shows A's {name}" for name in leaks(w, principal, case, shared, response)
            ]
    assert problems == [], "\n".join(problems)
    after = await snapshot(w)
    assert after == before, "a refused request changed A's things"
    image_dir = app.running.settings.images_dir / w.image
    assert (image_dir / "image.json").is_file()


async def test_asking_for_a_configuration_selects_it_and_makes_it_yours_alone(
    world: tuple[World, IamApp, bool],
) -> None:
    """Content-addressed: B asking for A's configuration gets A's image selected, not built
    again, with nothing of A's in it; B's delete drops B's use only; image events reach the
    image's users (and, shared, their VO), never another VO."""
    w, app, shared = world
    api, asgi = w.api, w.api._transport.app  # type: ignore[attr-defined]
    b, c, a = w.bearer[BOB], w.bearer[CAROL], w.bearer[ALICE]
    asked = await api.post("/api/v1/images", json={"application": "hello"}, headers=b)
    assert asked.status_code == 200, asked.text
    assert asked.json()["selected"] and asked.json()["image"]["id"] == w.image
    assert asked.json()["image"]["jobs"] == 0  # A's job is A's to know
    assert [i["id"] for i in (await api.get("/api/v1/images", headers=b)).json()] == [w.image]
    assert (await api.get("/api/v1/images", headers=c)).json() == []

    def stream(headers: dict[str, str]) -> asyncio.Task[httpx.Response]:
        request = api.build_request("GET", "/api/v1/events", headers=headers)
        return asyncio.create_task(first_events(asgi, request, until=b"event: image", wait=5))

    watching = {"B": stream(b), "C": stream(c)}
    await asyncio.sleep(0.5)  # both subscribed
    assert (await api.delete(f"/api/v1/images/{w.image}", headers=b)).status_code == 204
    seen = {who: (await task).text for who, task in watching.items()}
    assert "event: image" in seen["B"] and w.image in seen["B"]
    assert "event: image" not in seen["C"] and w.image not in seen["C"]
    # B's use is gone; A's image stays, files and all.
    assert (await api.get(f"/api/v1/images/{w.image}", headers=b)).status_code == (
        200 if shared else 404
    )
    mine = await api.get(f"/api/v1/images/{w.image}", headers=a)
    assert mine.status_code == 200 and mine.json()["status"] == "ready"
    assert mine.json()["jobs"] == 1
    assert (app.running.settings.images_dir / w.image / "image.json").is_file()
    assert (await api.get(f"/api/v1/images/{w.image}", headers=c)).status_code == 404


async def test_a_shared_image_is_read_only_to_the_vo(world: tuple[World, IamApp, bool]) -> None:
    """Shared with the VO, A's image shows B no Rebuild or Delete (B's would be refused, 403)
    and says why; A keeps both. Not shared, B does not see it at all."""
    w, _, shared = world
    for name, yours in ((ALICE, True), (BOB, False)):
        view = await w.api.get(f"/api/v1/images/{w.image}", headers=w.bearer[name])
        if not (yours or shared):
            assert view.status_code == 404
            continue
        assert view.status_code == 200 and view.json()["yours"] is yours
        page = await w.browsers[name].get(f"/images/{w.image}")
        assert page.status_code == 200
        assert (f"/images/{w.image}/delete" in page.text) is yours
        assert ("Shared with your VO read-only" in page.text) is not yours
