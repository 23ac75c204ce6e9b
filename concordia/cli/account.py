"""Account commands: `concordia login` (IAM device flow), logout, me, credential, proxy."""

from __future__ import annotations

import getpass
import time
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.text import Text

from concordia.cli import tokens
from concordia.cli.common import api_of, app, err, fail, get_settings, isolation, say

credential_app = typer.Typer(help="Your grid certificate, kept encrypted by Concordia.")
proxy_app = typer.Typer(help="Your X.509 proxy (proxy-init).")
app.add_typer(credential_app, name="credential")
app.add_typer(proxy_app, name="proxy")
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def _post(url: str, data: dict[str, str]) -> dict[str, Any]:
    try:
        response = httpx.post(url, data=data, timeout=30)
    except httpx.HTTPError as exc:
        fail(f"IAM at {url} did not answer: {exc}", 2)
    try:
        body: dict[str, Any] = response.json()
    except ValueError:
        fail(f"IAM answered {response.status_code} without JSON from {url}", 2)
    if response.status_code >= 500:
        fail(f"IAM answered {response.status_code} from {url}", 2)
    body["_status"] = response.status_code
    return body


@app.command()
def login(
    ctx: typer.Context,
    timeout: float = typer.Option(600, min=1, help="Give up after this many seconds."),
) -> None:
    """Sign in with IAM (device flow): open the link shown, approve, and the CLI is signed in."""
    api = api_of(ctx)
    config = api.call("GET", "/auth")
    if config["mode"] != "iam":
        say("This Concordia runs in local mode: the CLI uses its api-token file, no login needed.")
        return
    if not config["cli_client_id"]:
        fail("This Concordia has no IAM client for the CLI (setting oidc_cli_client_id).")
    issuer, client_id = config["issuer"], config["cli_client_id"]
    try:
        metadata = httpx.get(f"{issuer}/.well-known/openid-configuration", timeout=30).json()
        device_url, token_url = (
            metadata["device_authorization_endpoint"],
            metadata["token_endpoint"],
        )
    except (httpx.HTTPError, ValueError, KeyError):
        fail(f"IAM at {issuer} does not describe a device flow", 2)
    scopes = [s for s in config["scopes"] if s != "proxy:generate"]  # a web-client scope
    audience = config.get("audience")  # a server that checks it refuses tokens without it
    asked = {"client_id": client_id, "scope": " ".join(scopes)}
    grant = _post(device_url, asked | ({"aud": audience} if audience else {}))
    if grant["_status"] != 200:
        fail(f"IAM refused to start the sign-in: {grant.get('error_description') or grant}")
    say("To sign in, open this link in a browser and approve:", "bold")
    say(grant.get("verification_uri_complete") or grant["verification_uri"])
    say(f"(or open {grant['verification_uri']} and enter the code {grant['user_code']})")
    interval = float(grant.get("interval", 5))
    deadline = time.monotonic() + min(timeout, float(grant.get("expires_in", timeout)))
    with err.status("Waiting for your approval in the browser…"):
        while True:
            if time.monotonic() > deadline:
                fail("The sign-in was not approved in time: run `concordia login` again.")
            time.sleep(interval)
            token = _post(
                token_url,
                {
                    "grant_type": DEVICE_GRANT,
                    "device_code": grant["device_code"],
                    "client_id": client_id,
                },
            )
            error = token.get("error")
            if error == "authorization_pending":
                continue
            if error == "slow_down":
                interval += 5  # RFC 8628: each slow_down adds five seconds
                continue
            if error:
                fail(f"IAM did not sign you in: {token.get('error_description') or error}")
            break
    path = get_settings().cli_tokens_file
    entry = tokens.entry_of(token, issuer, client_id, token_url, audience)
    tokens.remember(path, api.url, entry)
    api.use_token(str(token["access_token"]))
    me = api.call("GET", "/me")
    say(f"Signed in to {api.url} as {me['username']}. {me['recognised']}.", "green")


@app.command()
def logout(ctx: typer.Context) -> None:
    """Forget the IAM tokens `concordia login` stored for this server."""
    api = api_of(ctx)
    if tokens.forget(get_settings().cli_tokens_file, api.url):
        say(f"Signed out of {api.url}.")
    else:
        say(f"Not signed in to {api.url} with IAM.")


@app.command()
def me(ctx: typer.Context) -> None:
    """Who you are to the server: memberships, certificate, proxy, where jobs can run."""
    d = api_of(ctx).call("GET", "/me")
    say(f"{d['username']} ({d['display_name'] or 'no display name'})", "bold")
    say(f"mode: {d['mode']}, signed in by {d['auth']}")
    say(d["recognised"])
    if d["mode"] == "iam":
        say(f"certificate (IAM): {d['certificate_dn'] or _scim_note(d)}")
    if d["credential"]:
        c = d["credential"]
        say(f"credential: {c['dn']}, expires {c['not_after']}")
    p = d["proxy"]
    say(
        f"proxy: {p['dn']}, {p['seconds_left'] / 3600:.1f} h left ({p['source']})"
        if p
        else "proxy: none"
    )
    if p and p.get("shortened"):
        say(f"       shorter than asked: {p['shortened']}")
    for b in d["backends"]:
        say(Text("backend ").append_text(isolation(b["name"], b["isolation_problem"])))
        say(f"        containers: {b['runtime']}")
        say(f"        bounds: {b['limits']}")


def _scim_note(d: dict[str, Any]) -> str:
    scim = d.get("scim")
    if not scim:
        return "not read yet"
    if scim["status"] != "ok":
        return f"not readable ({scim['message']})"
    return "none linked to your IAM account (link it in IAM, then `concordia me`)"


@credential_app.command("upload")
def credential_upload(
    ctx: typer.Context,
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help=".p12 or PEM certificate"),
    key: Path | None = typer.Option(None, exists=True, dir_okay=False, help="PEM key file"),
) -> None:
    """Upload your certificate and key once; Concordia checks and keeps them encrypted."""
    password = getpass.getpass("Password of the certificate file or key (empty if none): ")
    files: dict[str, tuple[str, bytes]] = {"file": (file.name, file.read_bytes())}
    if key is not None:
        files["key"] = (key.name, key.read_bytes())
    view = api_of(ctx).call("POST", "/me/credential", files=files, data={"password": password})
    say(f"Stored, encrypted: {view['dn']} (expires {view['not_after']})", "green")


@credential_app.command("rm")
def credential_rm(ctx: typer.Context) -> None:
    """Delete your certificate and key from Concordia."""
    api_of(ctx).call("DELETE", "/me/credential")
    say("Deleted.")


@proxy_app.command("init")
def proxy_init(
    ctx: typer.Context,
    hours: float | None = typer.Option(None, min=0.1, help="Lifetime (default: the server's)."),
    vo: str | None = typer.Option(None, help="The VO whose DIRAC group it carries."),
) -> None:
    """Get a fresh proxy (from IAM or your uploaded certificate, as the server is set up)."""
    view = api_of(ctx).call("POST", "/me/proxy", json={"lifetime_hours": hours, "vo": vo})
    say(
        f"Proxy for {view['dn']}: {view['seconds_left'] / 3600:.1f} h left ({view['source']})",
        "green",
    )
    if view.get("shortened"):
        say(f"Shorter than asked: {view['shortened']}", "yellow")
