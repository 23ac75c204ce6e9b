"""The job's data into the data lake: an RSE's WebDAV storage, where Rucio's layout puts it.

Concordia registers in Rucio what the wrapper stored (its manifest comes back in the output
sandbox). Part of the grid job wrapper (see concordia_job.py): standard library only,
Python 3.6+; imported only by a job that stores data.
"""

import json
import os

from .concordia_job_base import CONFIG, SH_SETTINGS, WRAPPER_FILES, Failure, tell

# DATALAKE_MANIFEST and lake_path are rules Concordia shares: its own copy is in
# concordia/core/datalake_layout.py (this module cannot import it on a node), and
# tests/unit/core/test_datalake_layout.py checks the two agree.

#: What the wrapper stored, for Concordia to register: in the output sandbox.
DATALAKE_MANIFEST = "concordia-datalake.json"
#: Bytes read and sent at a time (http.client's own 8 KB blocks make a GB upload slow).
UPLOAD_BLOCK = 4 << 20
#: DIRAC's own limit of an output sandbox, where Concordia did not say one.
SANDBOX_MAX_BYTES = 10 << 20
#: The wrapper's own files in the job's directory and the job's logs (the JDL's StdOutput
#: and StdError, which DIRAC is still writing): never data.
OWN_FILES = frozenset(
    {*WRAPPER_FILES, CONFIG, SH_SETTINGS, DATALAKE_MANIFEST} | {"std.out", "std.err"}
)


def lake_path(scope, name):
    """Where Rucio's deterministic "hash" lfn2pfn puts ``scope:name`` under an RSE's prefix:
    user.jane -> user/jane, then the md5 of "scope:name" in two levels, then the name."""
    import hashlib

    text = f"{scope}:{name}".encode()
    try:  # not a secret: Rucio's layout (FIPS nodes refuse md5 unless told so, 3.9+)
        digest = hashlib.md5(text, usedforsecurity=False).hexdigest()
    except TypeError:
        digest = hashlib.md5(text).hexdigest()  # noqa: S324
    top = scope.replace(".", "/") if scope.startswith(("user", "group")) else scope
    return f"{top}/{digest[0:2]}/{digest[2:4]}/{name}"


def lake_url(lake, name, quoted=False):
    """The WebDAV URL of ``scope:name`` on the RSE whose prefix is lake["url"]: as Rucio
    writes its PFN, or ``quoted`` as it goes in a request."""
    from urllib.parse import quote

    path = lake_path(lake["scope"], name)
    return lake["url"].rstrip("/") + "/" + (quote(path) if quoted else path)


def lake_files(lake):
    """The job's outputs that go to the data lake, as (path, name): whatever a data glob
    matches, and what an output-sandbox glob matches that is too big for the sandbox."""
    import glob

    limit = int(lake.get("sandbox_max_bytes") or SANDBOX_MAX_BYTES)
    chosen = {}
    for patterns, big_only in ((lake.get("data") or [], False), (lake.get("outputs") or [], True)):
        for pattern in patterns:
            for path in sorted(glob.glob(pattern)):
                if path in chosen or path in OWN_FILES or not os.path.isfile(path):
                    continue
                if big_only and os.path.getsize(path) <= limit:
                    continue
                chosen[path] = lake.get("names", "") + os.path.basename(path)
    seen = {}
    for path, name in sorted(chosen.items()):
        if name in seen:
            raise Failure(f"data lake: {seen[name]} and {path} would both be stored as {name}")
        seen[name] = path
    return sorted(chosen.items())


def lake_context(lake):
    """TLS as the node verifies the RSE (its CA if Concordia gave it, else the node's and
    the grid's CAs), with the user's proxy as client certificate where there is no token."""
    import ssl

    context = ssl.create_default_context(cadata=lake.get("ca") or None)
    grid_cas = os.environ.get("X509_CERT_DIR") or "/etc/grid-security/certificates"
    if not lake.get("ca") and os.path.isdir(grid_cas):
        context.load_verify_locations(capath=grid_cas)
    proxy = os.environ.get("X509_USER_PROXY")
    tokens = lake.get("token") or lake.get("token_url")
    if not tokens and proxy and has_certificate(proxy):
        try:
            context.load_cert_chain(proxy)
        except (OSError, ssl.SSLError) as exc:
            raise Failure(f"data lake: cannot use the proxy in $X509_USER_PROXY: {exc}") from None
    return context


def has_certificate(proxy):
    """Whether the job's proxy file holds an X.509 certificate (DIRAC 9's may hold only its
    DiracX token: then the storage is asked without one, and says if it wants one)."""
    try:
        with open(proxy) as fh:
            return "-----BEGIN CERTIFICATE-----" in fh.read()
    except OSError:
        return False


def lake_put(lake, path, url, context=None, upload_token=None):
    """PUT the file at ``path`` to ``url``, streamed, its adler32 computed as it is sent, then
    a HEAD to see the storage holds all of it: (bytes, adler32 as 8 hex digits). With an
    ``upload_token`` (it may create, not read) there is no HEAD: Concordia compares what
    the storage holds when it registers the file."""
    import http.client
    from urllib.parse import urlsplit

    label = os.path.basename(path)
    parts = urlsplit(url.replace("davs://", "https://", 1))  # Rucio's name for WebDAV over TLS
    if parts.scheme != "https":
        raise Failure(f"data lake: upload of {label} refused: {parts.scheme} is not https")
    token = upload_token or lake.get("token")
    headers = {"Authorization": "Bearer " + token} if token else {}
    connection = http.client.HTTPSConnection(
        parts.hostname, parts.port, context=context or lake_context(lake), timeout=600
    )
    size = os.path.getsize(path)
    try:
        response, adler32, changed = lake_send(connection, parts.path, headers, path, size)
        response.read()
        if response.status not in (201, 204):
            raise Failure(
                f"data lake: upload of {label} refused: HTTP {response.status} {response.reason}"
            )
        if changed:
            raise Failure(f"data lake: {label} changed while it was uploaded")
        if upload_token:
            stored, digest = size, None
        else:
            stored, digest = lake_head(connection, parts.path, headers)
    except (OSError, http.client.HTTPException) as exc:
        raise Failure(f"data lake: upload of {label} failed: {exc}") from None
    finally:
        connection.close()
    if stored != size:
        raise Failure(f"data lake: the storage holds {stored} bytes of {label}, not {size}")
    adler32 = f"{adler32 & 0xFFFFFFFF:08x}"
    if digest is not None and digest != adler32:
        raise Failure(f"data lake: {label} stored with adler32 {digest}, sent {adler32}")
    return size, adler32


def lake_send(connection, target, headers, path, size):
    """The PUT of the file at ``path`` (``size`` bytes) to ``target``: the storage's answer,
    the adler32 of what was sent (as zlib gives it), and whether the file's size changed."""
    import http.client
    import zlib

    label = os.path.basename(path)
    adler32 = 1
    try:
        connection.putrequest("PUT", target, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.putheader("Content-Length", str(size))
        connection.putheader("Content-Type", "application/octet-stream")
        connection.endheaders()
        sent = 0
        with open(path, "rb") as fh:
            while sent < size:
                block = fh.read(min(UPLOAD_BLOCK, size - sent))
                if not block:
                    break
                adler32 = zlib.adler32(block, adler32)
                connection.send(block)
                sent += len(block)
            if sent != size:  # shorter now: the storage would wait for the rest
                raise Failure(f"data lake: {label} changed while it was uploaded")
            changed = os.fstat(fh.fileno()).st_size != size
    except OSError as exc:
        # The storage may refuse before it has read the body, and close: its answer.
        try:
            response = connection.getresponse()
        except (OSError, http.client.HTTPException):
            raise Failure(f"data lake: upload of {label} failed: {exc}") from None
        changed = False
    else:
        response = connection.getresponse()
    return response, adler32, changed


def lake_head(connection, target, headers):
    """The size the storage holds at ``target``, and its adler32 where it keeps one."""
    connection.request("HEAD", target, headers={**headers, "Want-Digest": "adler32"})
    response = connection.getresponse()
    response.read()
    if response.status != 200:
        raise OSError(f"HEAD answered HTTP {response.status} {response.reason}")
    digest = None
    for item in (response.getheader("Digest") or "").split(","):
        kind, _, value = item.strip().partition("=")
        if kind.lower() == "adler32" and value:
            digest = value.lower().zfill(8)
    return int(response.getheader("Content-Length") or -1), digest


def write_manifest(entries):
    """concordia-datalake.json, whole or not at all (what Concordia reads and registers)."""
    partial = DATALAKE_MANIFEST + ".part"
    with open(partial, "w") as fh:
        json.dump(entries, fh, indent=1)
    os.replace(partial, DATALAKE_MANIFEST)


def store_outputs(lake):
    """Every data output of the job into the data lake, then out of the job's directory (the
    sandbox does not carry it); the manifest lists what is stored, even if one fails."""
    stored = []
    write_manifest(stored)
    files = lake_files(lake)
    if not files:
        return
    context = lake_context(lake)
    for path, name in files:
        url = lake_url(lake, name)
        token = upload_token(lake, name) if lake.get("token_url") else None
        size, adler32 = lake_put(lake, path, lake_url(lake, name, quoted=True), context, token)
        stored.append({"name": name, "file": path, "bytes": size, "adler32": adler32, "url": url})
        write_manifest(stored)
        os.unlink(path)
        tell(f"data lake: {path} stored as {lake['scope']}:{name} ({size} bytes)")


def upload_token(lake, name):
    """A token from Concordia that may upload ``name`` (fetched just before its upload: a
    job may have waited days for a node); never written anywhere, never said."""
    import ssl
    import urllib.error
    import urllib.request
    from urllib.parse import quote

    url = lake["token_url"] + "&name=" + quote(name, safe="")
    context = ssl.create_default_context()
    grid_cas = os.environ.get("X509_CERT_DIR") or "/etc/grid-security/certificates"
    if os.path.isdir(grid_cas):
        context.load_verify_locations(capath=grid_cas)
    try:
        with urllib.request.urlopen(url, timeout=60, context=context) as answer:  # noqa: S310
            return answer.read().decode("ascii").strip()
    except urllib.error.HTTPError as exc:
        raise Failure(
            f"data lake: Concordia gave no upload token for {name}: HTTP {exc.code} {refusal(exc)}"
        ) from None
    except (OSError, ValueError) as exc:
        raise Failure(f"data lake: Concordia gave no upload token for {name}: {exc}") from None


def refusal(error):
    """Why Concordia refused, as its JSON answer says ({"detail": ...}), else the reason."""
    try:
        detail = json.loads(error.read().decode("utf-8", "replace"))["detail"]
    except (OSError, ValueError, KeyError, TypeError):
        return error.reason
    return detail if isinstance(detail, str) else json.dumps(detail)
