"""The known-clusters file (pinned serving CAs, issue 17 item 4): first use
records, a change is refused naming both fingerprints, accepting is
deliberate, an out-of-band fingerprint is enforced, the file is 0600."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from certs import CertificateAuthority, fingerprint_sha256
from client.errors import ConfigError
from client.known_clusters import CaChanged, KnownClusters, check_pin, parse_fingerprint

RELAY = "https://relay.example:8443"


@pytest.fixture(scope="module")
def cas() -> tuple[bytes, bytes]:
    return (CertificateAuthority.create("cluster CA one").certificate_pem,
            CertificateAuthority.create("cluster CA two").certificate_pem)


def test_known_clusters_first_use_records_then_matches_silently(tmp_path: Path, cas: tuple[bytes, bytes]) -> None:
    """The first check pins (one line saying so, file 0600); the same CA again says nothing."""
    known = KnownClusters(tmp_path / "cfg" / "known_clusters")
    note = check_pin(known, RELAY, "lab/edge", cas[0], "edge.lab.example")
    assert note is not None and note.startswith("First use of cluster lab/edge: pinned its serving CA sha256:")
    assert fingerprint_sha256(cas[0]) in note and "\n" not in note
    assert stat.S_IMODE(known.path.stat().st_mode) == 0o600
    assert check_pin(known, RELAY, "lab/edge", cas[0], "edge.lab.example") is None
    assert f"{RELAY} lab/edge sha256:{fingerprint_sha256(cas[0])} edge.lab.example" in known.path.read_text()


def test_known_clusters_refuse_another_ca_naming_both_fingerprints(tmp_path: Path, cas: tuple[bytes, bytes]) -> None:
    """A different CA is refused in one line with both fingerprints and the way to accept."""
    known = KnownClusters(tmp_path / "known_clusters")
    check_pin(known, RELAY, "lab/edge", cas[0], "edge")
    with pytest.raises(CaChanged) as info:
        check_pin(known, RELAY, "lab/edge", cas[1], "edge")
    msg = str(info.value)
    assert fingerprint_sha256(cas[0]) in msg and fingerprint_sha256(cas[1]) in msg
    assert "--accept-new-ca" in msg and "\n" not in msg
    assert known.get(RELAY, "lab/edge").fingerprint == fingerprint_sha256(cas[0])  # type: ignore[union-attr]
    with pytest.raises(CaChanged, match="TLS server name other"):
        check_pin(known, RELAY, "lab/edge", cas[0], "other")


def test_known_clusters_accept_new_replaces_the_pin(tmp_path: Path, cas: tuple[bytes, bytes]) -> None:
    """--accept-new-ca records the new CA and says which one it replaced."""
    known = KnownClusters(tmp_path / "known_clusters")
    check_pin(known, RELAY, "lab/edge", cas[0], "edge")
    note = check_pin(known, RELAY, "lab/edge", cas[1], "edge", accept_new=True)
    assert note is not None and fingerprint_sha256(cas[0]) in note and fingerprint_sha256(cas[1]) in note
    assert check_pin(known, RELAY, "lab/edge", cas[1], "edge") is None
    # Pins are per relay: another relay's same cluster id is a first use.
    assert check_pin(known, "https://other-relay", "lab/edge", cas[0], "edge") is not None


def test_known_clusters_out_of_band_fingerprint_is_enforced(tmp_path: Path, cas: tuple[bytes, bytes]) -> None:
    """--ca-fingerprint refuses any other CA, before anything is recorded, and pins a match."""
    known = KnownClusters(tmp_path / "known_clusters")
    with pytest.raises(CaChanged, match="as --ca-fingerprint says"):
        check_pin(known, RELAY, "lab/edge", cas[1], "edge", expected="sha256:" + fingerprint_sha256(cas[0]))
    assert not known.path.exists()
    colons = ":".join(fingerprint_sha256(cas[0])[i:i + 2] for i in range(0, 64, 2)).upper()
    assert check_pin(known, RELAY, "lab/edge", cas[0], "edge", expected=colons) is not None
    assert known.get(RELAY, "lab/edge") is not None


def test_known_clusters_bad_input_is_one_line(tmp_path: Path) -> None:
    """A malformed fingerprint or file line is a ConfigError naming it."""
    with pytest.raises(ConfigError, match="not a SHA-256 fingerprint"):
        parse_fingerprint("sha256:abc")
    path = tmp_path / "known_clusters"
    path.write_text("# comment\nnot a valid line\n")
    with pytest.raises(ConfigError, match=f"{path}:2"):
        KnownClusters(path).pins()


def test_arcctl_known_clusters_list_and_forget(tmp_path: Path, cas: tuple[bytes, bytes]) -> None:
    """`arcctl known-cas list` shows the pin of the config's file;
    `forget` removes it (a second forget is one line, exit 1)."""
    import json
    import os
    import subprocess
    import sys

    import yaml

    root = Path(__file__).resolve().parents[2]
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"relay": {"url": RELAY}, "resource_group": "lab"}))
    check_pin(KnownClusters.beside(config), RELAY, "lab/edge", cas[0], "edge")

    def arcctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "client.arcctl", "known-cas", *args,
                               "--config", str(config)], capture_output=True, text=True, timeout=60,
                              cwd=root, env={**os.environ, "PYTHONPATH": str(root)})

    listed = arcctl("list")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == [{"relayUrl": RELAY, "cluster": "lab/edge", "tlsServerName": "edge",
                                         "servingCaFingerprint": "sha256:" + fingerprint_sha256(cas[0])}]
    forgot = arcctl("forget", "-n", "edge")
    assert forgot.returncode == 0 and "Forgot" in forgot.stderr, forgot.stderr
    assert KnownClusters.beside(config).pins() == []
    again = arcctl("forget", "-n", "edge")
    assert again.returncode == 1 and len(again.stderr.strip().splitlines()) == 1, again.stderr
