"""``python -m sandbox.apiserver`` as a process: ready file, serving, clean exit."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support.sandbox import spawn_apiserver


def test_cli_writes_ready_file_serves_and_exits_on_sigterm(tmp_path: Path) -> None:
    """The ready file describes a serving server; SIGTERM ends the process with status 0."""
    started = time.monotonic()
    server = spawn_apiserver(tmp_path, "1.30.2")
    try:
        # The figure is reported, not asserted (performance belongs to bench/).
        print(f"apiserver ready after {time.monotonic() - started:.2f}s")
        info = server.ready_info
        assert {"url", "port", "ca_pem", "ca_file", "admin_token", "admin_kubeconfig_path"} <= set(info)
        ctx = ssl.create_default_context(cafile=info["ca_file"])
        req = urllib.request.Request(info["url"] + "/version",
                                     headers={"Authorization": f"Bearer {info['admin_token']}"})
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            version = json.load(resp)
        assert (version["major"], version["minor"], version["gitVersion"]) == ("1", "30", "v1.30.2")
        assert server.stop() == 0
        server.err.wait_eof()
        stderr = "\n".join(server.err.seen)
        assert "Traceback" not in stderr
        assert info["admin_token"] not in stderr
    finally:
        server.stop()


def test_cli_rejects_bad_version_with_one_line(tmp_path: Path) -> None:
    """A malformed --version is one error line and a non-zero exit, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "sandbox.apiserver", "--state-dir", str(tmp_path),
                           "--version", "banana"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--version" in proc.stderr
