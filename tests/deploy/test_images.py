"""The arc-agent and arc-relay images build here, with Debian's own tools and no
registry (deploy/build-images.sh: debootstrap base, podman build of
deploy/Containerfile), and run as their manifests run them: read-only root
filesystem, non-root user.

Skipped, with the reason, where podman, runc or debootstrap is missing (.ci/run
installs them). Cold, the base image takes minutes (debootstrap); warm, seconds.
"""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VERSION = "0.1.0"
PREFIX = "localhost/cluster-connect"
MISSING = [tool for tool in ("podman", "runc", "debootstrap") if shutil.which(tool) is None]

pytestmark = [
    pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)} (Debian: apt-get install podman "
                                              "runc debootstrap)"),
    pytest.mark.timeout(1500),
]


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    # runc and explicit ulimits: see deploy/build-images.sh.
    run_opts = ["--runtime", "runc"] if args[0] == "run" else []
    limits = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"] if args[0] == "run" else []
    cmd = ["podman", args[0], *run_opts, *limits, *args[1:]]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


@pytest.fixture(scope="module")
def images() -> None:
    p = subprocess.run([str(ROOT / "deploy/build-images.sh")], capture_output=True, text=True, timeout=1400,
                       cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr


def test_agent_image_runs_read_only_as_non_root(images: None) -> None:
    p = podman("run", "--rm", "--read-only", f"{PREFIX}/arc-agent:{VERSION}", "--help")
    assert p.stdout.startswith("usage: arc-agent"), p.stdout + p.stderr
    p = podman("run", "--rm", "--read-only", "--entrypoint", "id", f"{PREFIX}/arc-agent:{VERSION}", "-u")
    assert p.stdout.strip() == "65532"


@pytest.fixture
def relay_container(images: None, tmp_path: Path) -> Iterator[str]:
    name = f"arc-relay-test-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "relay.yaml"
    config.write_text('listen: "127.0.0.1:0"\n')
    config.chmod(0o644)
    podman("run", "-d", "--name", name, "--read-only", "--network", "host",
           "-v", f"{name}:/var/lib/arc-relay", "-v", f"{config}:/etc/arc-relay/config.yaml:ro",
           f"{PREFIX}/arc-relay:{VERSION}", "--config", "/etc/arc-relay/config.yaml")
    try:
        yield name
    finally:
        podman("rm", "-f", name, check=False)
        podman("volume", "rm", "-f", name, check=False)


def test_relay_image_serves_healthz_read_only_as_non_root(relay_container: str, tmp_path: Path) -> None:
    """On its own defaults plus a listen address: state on its volume, /healthz
    over TLS verified with the development CA it made."""
    deadline = time.monotonic() + 60
    url = None
    while url is None:
        logs = podman("logs", relay_container).stdout
        found = re.search(r"^arc-relay: serving (https://127\.0\.0\.1:\d+)", logs, re.MULTILINE)
        if found:
            url = found.group(1)
        elif time.monotonic() > deadline or podman("inspect", "-f", "{{.State.Running}}",
                                                   relay_container).stdout.strip() != "true":
            raise AssertionError("the relay did not start:\n" + logs
                                 + podman("logs", relay_container).stderr)
        else:
            time.sleep(0.2)  # polling the container's log for its one start-up line
    ca = tmp_path / "ca.crt"
    podman("cp", f"{relay_container}:/var/lib/arc-relay/cluster-connect/relay/tls/ca.crt", str(ca))
    context = ssl.create_default_context(cafile=str(ca))
    with urllib.request.urlopen(f"{url}/healthz", context=context, timeout=10) as resp:
        assert resp.status == 200
    assert podman("exec", relay_container, "id", "-u").stdout.strip() == "65532"
    p = podman("exec", relay_container, "touch", "/opt/cluster-connect/x", check=False)
    assert p.returncode != 0 and "Read-only file system" in p.stderr
