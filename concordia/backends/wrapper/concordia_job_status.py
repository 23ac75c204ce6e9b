"""The job's application status in DiracX, told with the token DIRAC 9 puts in its proxy.

Part of the grid job wrapper (see concordia_job.py): standard library only, Python 3.6+.
"""

import binascii
import json
import os

from .concordia_job_base import say

#: Concordia reads the exit code back from this application status (keep the two in step).
EXITED = "Application exited with code {}"
#: The marker of DIRAC 9's DiracX token inside the job's proxy file.
DIRACX_PEM = ("-----BEGIN DIRACX-----", "-----END DIRACX-----")


def diracx_token(proxy):
    """The DiracX access token DIRAC 9 writes into the job's proxy file, if any."""
    try:
        with open(proxy) as fh:
            pem = fh.read()
    except (OSError, TypeError):
        return None
    begin, end = DIRACX_PEM
    if begin not in pem or end not in pem:
        return None
    body = pem.split(begin, 1)[1].split(end, 1)[0]
    try:
        return json.loads(binascii.a2b_base64("".join(body.split())).decode())["access_token"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None


def report(config, text):
    """The job's application status in DiracX (what Concordia shows); a node that cannot
    tell it still runs the job."""
    url, job_id = config.get("diracx_url"), os.environ.get("DIRACJOBID")
    token = diracx_token(os.environ.get("X509_USER_PROXY"))
    if not (url and job_id and token):
        return
    import urllib.error
    import urllib.request
    from datetime import datetime, timezone

    when = datetime.now(timezone.utc).isoformat()  # noqa: UP017 - datetime.UTC is 3.11+
    body = {job_id: {when: {"ApplicationStatus": text[:255], "Source": "Concordia"}}}
    request = urllib.request.Request(  # noqa: S310 - DiracX's URL, from Concordia
        url.rstrip("/") + "/api/jobs/status",
        data=json.dumps(body).encode(),
        method="PATCH",
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"},
    )
    try:
        urllib.request.urlopen(request, timeout=30).close()  # noqa: S310
    except (urllib.error.URLError, OSError) as exc:
        say(f"could not set the application status in DiracX: {exc}")
