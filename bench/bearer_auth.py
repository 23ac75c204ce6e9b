"""What IAM bearer tokens cost: GET /api/v1/jobs with an IAM access token (a JWT checked
against the issuer's keys on every request) against the same request with a Concordia API
token (one digest lookup), each on a real `concordia serve`.

IAM is the loopback test double of tests/iam (keys fetched once, then cached). Both servers
start empty: the request's own work is the same, authentication is the difference. 400
timed requests each, after 50 to warm up; the local-mode baseline is measured last. Last
line: `ratio <iam/api-token p95>`. Goal: <= 1.2.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from options import benchmark, parse
from server import serve

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.iam.fixtures import serving_iam

WARM_UP = 50


def timed(client: httpx.Client, headers: dict[str, str], requests: int) -> list[float]:
    times = []
    for i in range(WARM_UP + requests):
        start = time.perf_counter()
        response = client.get("/api/v1/jobs?per_page=20", headers=headers)
        elapsed = time.perf_counter() - start
        response.raise_for_status()
        if i >= WARM_UP:
            times.append(elapsed * 1000)
    return times


def p95(times: list[float]) -> float:
    return statistics.quantiles(times, n=20)[-1]


def main() -> None:
    parser = benchmark(__doc__)
    parser.add_argument("--requests", type=int, default=400, help="timed, after 50 to warm up")
    args = parse(parser, requests=20)
    with tempfile.TemporaryDirectory() as tmp, serving_iam() as iam:
        root = Path(tmp)
        iam.add_user("jane")
        bearer = {"Authorization": f"Bearer {iam.token_for('jane')}"}
        settings = {"local_slots": "1"}
        iam_settings = {
            "oidc_issuer": iam.url, "oidc_client_id": "concordia",
            "oidc_client_secret": "concordia-secret", **settings,
        }  # fmt: skip
        with serve(root / "iam-var", **iam_settings) as server:
            with httpx.Client(base_url=server.url, timeout=60) as client:
                with_iam = timed(client, bearer, args.requests)
        with serve(root / "local-var", **settings) as server:
            local = {"Authorization": f"Bearer {server.token}"}
            with httpx.Client(base_url=server.url, timeout=60) as client:
                with_token = timed(client, local, args.requests)
    print(f"iam_jwt   median_ms {statistics.median(with_iam):.2f} p95_ms {p95(with_iam):.2f}")
    print(f"api_token median_ms {statistics.median(with_token):.2f} p95_ms {p95(with_token):.2f}")
    print(f"ratio {p95(with_iam) / p95(with_token):.2f}")


if __name__ == "__main__":
    main()
