"""Image build steps attack the server that builds them: they must see nothing of the host."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from tests.conftest import make_settings, running_app
from tests.integration.conftest import host_address
from tests.integration.images.test_images import BUSYBOX, wait_built

pytestmark = pytest.mark.real

SECRET = "environ-secret-3f9a1c"


def attack_yaml(pid: int, data_dir: Path, port: int, host: str) -> str:
    probes = {
        "pids": "ls /proc | grep -E '^[0-9]+$' | tr '\\n' ' '",
        "environ": f"tr '\\0' ' ' 2>&1 </proc/{pid}/environ",
        "encryption-key": f"cat /proc/{pid}/root{data_dir}/encryption-key",
        "uid_map": "cat /proc/self/uid_map",
        "route-del": "ip route del 169.254.0.0/16",
        "loopback": f"timeout 5 nc 127.0.0.1 {port} </dev/null",
        "host-loopback": f"timeout 5 nc 10.0.2.2 {port} </dev/null",
        "link-local": f"timeout 5 nc 169.254.169.254 {port} </dev/null",
        "outbound": f"timeout 5 nc {host} {port} </dev/null",
    }
    # JSON strings are YAML's double-quoted scalars: the shell gets each line as written.
    lines = [f'echo "{name}=[$({probe} 2>&1)]"' for name, probe in probes.items()]
    steps = "".join(f"    - {json.dumps(line)}\n" for line in lines)
    return f'name: attack\ntitle: Attack\ncommand: "true"\n{BUSYBOX}{steps}'


def seen(log: str, name: str) -> str:
    # A log line starts with the build's elapsed time.
    found = re.search(rf"^\[ *\d+:\d\d\] {name}=\[(.*?)\]$", log, re.M | re.S)
    assert found, f"{name} missing from the build log:\n{log}"
    return found.group(1)


async def test_a_build_step_sees_nothing_of_the_host_but_the_network(
    tmp_path: Path, listener: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONCORDIA_ATTACK_TARGET", SECRET)  # in the server's environment
    apps = tmp_path / "apps"
    apps.mkdir()
    data_dir = tmp_path / "var"
    host = host_address()
    (apps / "attack.yaml").write_text(attack_yaml(os.getpid(), data_dir, listener, host))
    settings = make_settings(data_dir, applications_dir=apps, image_formats=[])
    async with running_app(settings) as app:
        started = await app.client.post("/api/v1/images", json={"application": "attack"})
        image = await wait_built(app.client, started.json()["image"]["id"], timeout=120)
        log = (await app.client.get(f"/api/v1/images/{image['id']}/log")).text
        assert image["status"] == "ready", log
    key = settings.encryption_key_file.read_text().strip()
    assert SECRET not in log and key not in log
    # Its own processes only: its PID namespace's first few, not the server's.
    pids = seen(log, "pids").split()
    assert str(os.getpid()) not in pids and len(pids) < 10, pids
    for name in ("environ", "encryption-key"):
        assert "no such file" in seen(log, name).lower()
    # Root in the image only: inner uid 0 is an unprivileged uid outside.
    inner, outer, _ = seen(log, "uid_map").split()
    assert inner == "0" and outer != "0"
    assert "Operation not permitted" in seen(log, "route-del")  # no CAP_NET_ADMIN
    # The host's loopback is out of reach, under both of its names; link-local too.
    for name in ("loopback", "host-loopback", "link-local"):
        assert f"reached {listener}" not in seen(log, name), name
    # ... while the same listener answers on the host's own address: outbound works.
    assert seen(log, "outbound").strip() == f"reached {listener}"
