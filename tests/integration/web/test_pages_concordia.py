"""The Concordia form and the submission page, in-process, signed in with the session."""

from __future__ import annotations

import re
from html import escape
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from sqlalchemy import func, select

from concordia.db.tables import Job, Submission
from tests.conftest import Running, make_settings, running_app

FORM = "/concordia/hello"
SHOWER_YAML = """
name: shower
title: Air showers
description: A CORSIKA-like application with an image configuration.
command: "echo {showers} {run} {array}"
job_name: "shower_{run}"
batch: {count: jobs, sequences: {run: first_run}}
build_args:
  he_model: {type: enum, label: HE Interaction Model, choices: [QGSJET, EPOS], default: EPOS}
image:
  variant: extract
  packages: [busybox-static]
  shell: /bin/busybox sh
  steps: ["/bin/busybox --install -s /bin", "echo {he_model} > /etc/he-model"]
parameters:
  jobs: {type: int, label: Jobs, default: 1, min: 1, max: 10}
  showers: {type: int, label: Showers, default: 100, min: 1, max: 100000}
  first_run: {type: int, label: "First Run #", default: 1, min: 0, max: 1000}
  array: {type: enum, label: Array, choices: [Paranal, LaPalma], default: Paranal}
"""


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the form carries no csrf field"
    return found.group(1)


def field_html(html: str, fid: str) -> str:
    """The markup of one field: from its label to the end of its message."""
    found = re.search(rf'<label for="{fid}">.*?id="err-{fid}"[^>]*>[^<]*</p>', html, re.S)
    assert found, f"no field {fid}"
    return found.group(0)


async def count(app: Running, table: type[Job] | type[Submission]) -> int:
    async with app.platform.reading() as session:
        return await session.scalar(select(func.count()).select_from(table)) or 0


async def test_the_catalogue_leads_to_each_application(signed_in: httpx.AsyncClient) -> None:
    page = (await signed_in.get("/concordia")).text
    assert 'href="/concordia/hello"' in page
    assert "Hello, Concordia" in page and "Prints a message" in page
    # Which outputs are data for the data lake, and whether by default.
    assert "data outputs <code>*.corsika.zst</code> to the data lake by default" in page
    assert "data outputs <code>photons_run*.npy</code> to the data lake on request" in page
    assert page.count("data outputs") == 2  # hello has none


async def test_the_form_has_a_labelled_input_per_parameter(
    app: Running, signed_in: httpx.AsyncClient
) -> None:
    response = await signed_in.get(FORM)
    assert response.status_code == 200
    html = response.text
    hello = app.platform.catalog.get("hello")
    assert list(hello.parameters) == ["jobs", "first_run", "message", "sleep", "exit_code"]
    for name, spec in hello.parameters.items():
        fid = f"p-{name}"
        field = field_html(html, fid)
        assert f'<label for="{fid}">{escape(spec.label)}' in field
        assert f'id="{fid}"' in field and f'name="parameters.{name}"' in field
        assert f'aria-describedby="help-{fid} err-{fid}"' in field
    assert "(number of jobs)" in field_html(html, "p-jobs")
    jobs = field_html(html, "p-jobs")
    assert 'type="number"' in jobs and 'min="1"' in jobs and 'max="1000"' in jobs
    assert 'value="1"' in jobs and 'step="1"' in jobs
    assert 'step="any"' in field_html(html, "p-sleep")
    assert 'maxlength="200"' in field_html(html, "p-message")
    assert "Image configuration" not in html  # hello has no build arguments
    assert "hello_1" in html  # the preview of the defaults


async def test_the_showermodel_form_offers_the_photon_file_off_by_default(
    signed_in: httpx.AsyncClient,
) -> None:
    html = (await signed_in.get("/concordia/showermodel")).text
    field = field_html(html, "p-photon_file")
    assert '<label for="p-photon_file">Photon file' in field
    assert '<select id="p-photon_file" name="parameters.photon_file"' in field
    options = re.findall(r'<option value="([^"]*)"( selected)?', field)
    assert options == [("none", " selected"), ("arrival-times", "")]
    assert "photons_run&lt;run&gt;.npy" in field  # the help says what it writes


async def test_check_shows_the_message_next_to_the_field_and_stores_nothing(
    app: Running, signed_in: httpx.AsyncClient
) -> None:
    response = await signed_in.post(f"{FORM}/check", data={"parameters.jobs": "0"})
    assert response.status_code == 200
    jobs = field_html(response.text, "p-jobs")
    assert 'aria-invalid="true"' in jobs
    assert re.search(r'id="err-p-jobs"[^>]*>must be &gt;= 1</p>', jobs)
    assert 'aria-invalid="false"' in field_html(response.text, "p-message")
    assert "The preview appears when every value is valid." in response.text
    assert await count(app, Job) == 0 and await count(app, Submission) == 0


async def test_the_preview_shows_the_runs_and_the_first_jdl(signed_in: httpx.AsyncClient) -> None:
    form = {"parameters.jobs": "3", "parameters.first_run": "7", "parameters.message": "hi"}
    html = (await signed_in.post(f"{FORM}/check", data=form)).text
    preview = html[html.index('id="concordia-preview"') :]
    assert "3 jobs</strong> · runs 7 to 9" in preview
    for name in ("hello_7", "hello_8", "hello_9"):
        assert f"<code>{name}</code>" in preview
    jdl = re.search(r'<pre class="jdl">(.*?)</pre>', preview, re.S)
    assert jdl and "JobName = &#34;hello_7&#34;" in jdl.group(1)


async def test_a_post_without_csrf_is_refused_and_stores_nothing(
    app: Running, signed_in: httpx.AsyncClient
) -> None:
    for csrf in (None, "forged"):
        data = {"parameters.jobs": "2"} | ({"csrf": csrf} if csrf else {})
        response = await signed_in.post(FORM, data=data)
        assert response.status_code == 403
        assert "Not allowed" in response.text
    assert await count(app, Submission) == 0


async def test_an_invalid_post_returns_the_form_with_messages(
    app: Running, signed_in: httpx.AsyncClient
) -> None:
    csrf = csrf_of((await signed_in.get(FORM)).text)
    data = {"csrf": csrf, "parameters.jobs": "0", "parameters.sleep": "soon"}
    response = await signed_in.post(FORM, data=data)
    assert response.status_code == 422
    assert 'role="alert"' in response.text
    assert 'value="soon"' in field_html(response.text, "p-sleep")  # what was typed stays
    assert "must be a number" in field_html(response.text, "p-sleep")
    assert await count(app, Submission) == 0


async def test_a_valid_post_leads_to_the_submission_page(
    app: Running, signed_in: httpx.AsyncClient
) -> None:
    csrf = csrf_of((await signed_in.get(FORM)).text)
    data = {"csrf": csrf, "parameters.jobs": "2", "parameters.first_run": "5"}
    response = await signed_in.post(FORM, data=data)
    assert response.status_code == 303
    location = response.headers["location"]
    assert re.fullmatch(r"/submissions/\d+", location)
    assert await count(app, Job) == 2
    page = await signed_in.get(location)
    assert page.status_code == 200
    assert "hello_5" in page.text and "hello_6" in page.text
    assert re.search(r'<a id="job-link-\d+" href="/jobs/\d+">', page.text)
    assert 'id="submission-progress"' in page.text and 'role="img"' in page.text
    progress = await signed_in.get(f"{location}/progress")
    assert progress.status_code == 200 and "of 2 jobs" in progress.text
    rows = await signed_in.get(f"{location}/rows")
    assert rows.text.count("<tr ") == 2


async def test_another_users_submission_is_not_found(
    app: Running, signed_in: httpx.AsyncClient
) -> None:
    async with app.new_client("bob") as bob:
        made = await bob.post("/api/v1/submissions", json={"application": "hello"})
        assert made.status_code == 201
    sid = made.json()["id"]
    for path in (f"/submissions/{sid}", f"/submissions/{sid}/progress", f"/submissions/{sid}/rows"):
        response = await signed_in.get(path)
        assert response.status_code == 404
        assert "Not found" in response.text and "Back to the home page" in response.text


async def test_an_unknown_application_is_a_not_found_page(signed_in: httpx.AsyncClient) -> None:
    for response in (
        await signed_in.get("/concordia/nope"),
        await signed_in.post("/concordia/nope/check", data={}),
    ):
        assert response.status_code == 404
        assert "Not found" in response.text


async def test_pages_need_a_signed_in_user(app: Running) -> None:
    async with httpx.AsyncClient(transport=app.client._transport, base_url="http://t") as anon:
        assert (await anon.get(FORM)).status_code == 401


async def test_build_arguments_form_the_image_configuration(tmp_path: Path) -> None:
    apps = tmp_path / "apps"
    apps.mkdir()
    (apps / "shower.yaml").write_text(SHOWER_YAML)
    async with running_app(make_settings(tmp_path / "var", applications_dir=apps)) as app:
        transport = app.client._transport
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            url = urlsplit(app.login_url)
            await c.get(f"{url.path}?{url.query}")
            html = (await c.get("/concordia/shower")).text
            fieldset = html[html.index("<legend>Image configuration</legend>") :]
            fieldset = fieldset[: fieldset.index("</fieldset>")]
            assert '<select id="b-he_model" name="build_args.he_model"' in fieldset
            assert '<option value="EPOS" selected>' in fieldset
            assert "p-showers" not in fieldset
            assert '<select id="p-array" name="parameters.array"' in html
            bad = await c.post("/concordia/shower/check", data={"build_args.he_model": "SIBYLL"})
            assert "must be one of QGSJET, EPOS" in field_html(bad.text, "b-he_model")
            data = {"csrf": csrf_of(html), "build_args.he_model": "QGSJET", "parameters.jobs": "2"}
            made = await c.post("/concordia/shower", data=data)
            assert made.status_code == 303
            page = (await c.get(made.headers["location"])).text
            assert "HE Interaction Model: <code>QGSJET</code>" in page
