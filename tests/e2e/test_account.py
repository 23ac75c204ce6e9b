"""In a real browser: sign in through IAM (the loopback double's login form), see the
memberships and the certificate DN, upload a PKCS#12, get a proxy, sign out."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import LiveServer
from tests.e2e.conftest import shot
from tests.iam.pki import TestCA
from tests.iam.server import IamDouble


@pytest.fixture
def live_server_env(iam: IamDouble) -> dict[str, str]:
    iam.state.any_loopback_redirect = True  # the server's port is chosen when it starts
    return {
        "CONCORDIA_OIDC_ISSUER": iam.url,
        "CONCORDIA_OIDC_CLIENT_ID": "concordia",
        "CONCORDIA_OIDC_CLIENT_SECRET": "concordia-secret",
        "CONCORDIA_PROXY_SOURCES": '["iam", "upload"]',
    }


def test_sign_in_with_iam_upload_a_certificate_and_get_a_proxy(
    page: Page, live_server: LiveServer, iam: IamDouble, tmp_path: Path
) -> None:
    cert = TestCA().issue_user("Jane Doe")
    iam.add_user("jane", certificate=cert, uploaded_proxy=True)  # IAM's proxies last 12 h
    p12 = tmp_path / "jane.p12"
    p12.write_bytes(cert.pkcs12("p12 secret"))

    page.goto(f"{live_server.url}/account")
    expect(page.get_by_role("heading", name="Please sign in")).to_be_visible()
    page.get_by_role("link", name="Sign in with your IAM account").click()
    expect(page).to_have_title("INDIGO IAM test double")  # IAM's own page
    page.get_by_label("Username").fill("jane")
    page.get_by_label("Password").fill("wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("Bad credentials")
    page.get_by_label("Username").fill("jane")
    page.get_by_label("Password").fill("pw-jane")
    page.get_by_role("button", name="Sign in").click()

    page.wait_for_url(f"{live_server.url}/account")
    assert "/auth/callback?code=***&state=" in live_server.output()  # the code is not logged
    expect(page.get_by_label("Signed in as")).to_have_text("Jane Tester")
    expect(page.locator("#memberships")).to_contain_text("Recognised as a member of ESCAPE, CTA")
    expect(page.locator("#certificates")).to_contain_text("/C=NL/O=Nikhef/CN=Jane Doe")
    # The issuer in the same DIRAC slash form as the subject, not IAM's RFC 2253.
    expect(page.locator("#certificates")).to_contain_text(
        "/C=NL/O=Concordia Tests/CN=Concordia Test CA"
    )
    expect(page.locator("#no-proxy")).to_be_visible()

    # Only IAM can give one yet: its 12 h proxy, saying why it is shorter than asked.
    page.get_by_label("Lifetime (hours)").fill("30")
    page.get_by_role("button", name="Get a proxy").click()
    expect(page.get_by_role("status")).to_contain_text("Shorter than asked: 12.0 h instead")
    expect(page.locator("#proxy")).to_contain_text("IAM's managed proxy")
    expect(page.locator("#proxy-shortened")).to_contain_text(
        "IAM gives managed proxies of at most 12.0 h"
    )

    page.get_by_label("Certificate: PKCS#12 (.p12) or PEM").set_input_files(str(p12))
    page.get_by_label("Password of the .p12 file or of the key").fill("p12 secret")
    page.get_by_role("button", name="Upload").click()
    expect(page.get_by_role("status")).to_contain_text("/C=NL/O=Nikhef/CN=Jane Doe is stored")
    expect(page.locator("#credential")).to_contain_text("/C=NL/O=Nikhef/CN=Jane Doe")

    page.get_by_label("Lifetime (hours)").fill("30")
    page.get_by_role("button", name="Get a proxy").click()
    expect(page.get_by_role("status")).to_contain_text("New proxy for /C=NL/O=Nikhef/CN=Jane Doe")
    expect(page.locator("#proxy")).to_contain_text("your uploaded certificate")
    expect(page.locator("#proxy")).to_contain_text("h left")
    expect(page.locator("#proxy-shortened")).to_have_count(0)  # 30 h, as asked
    shot(page, "account-iam")

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("link", name="Sign in")).to_be_visible()
    page.goto(f"{live_server.url}/account")
    expect(page.get_by_role("heading", name="Please sign in")).to_be_visible()
