"""Pinned serving CAs of clusters, as ssh's ``known_hosts`` pins host keys.

kubectl's TLS ends inside the cluster and arc-proxy writes the cluster's
serving CA and server name into the kubeconfig, taken from the registration
at the relay; so whoever controls the relay (or re-registers the cluster)
could otherwise put themselves between kubectl and the cluster. arc-proxy
records the CA's fingerprint at first use (trust on first use) or takes it
from ``--ca-fingerprint`` (handed out of band: ``arcctl connect`` prints it),
and refuses a later change until the user accepts it deliberately
(``arc-proxy --accept-new-ca`` or ``arcctl known-cas forget``).

The file is ``known_clusters`` next to the client config (mode 0600), one
line per cluster::

    <relay URL> <group>/<name> sha256:<hex of the CA certificate's DER> <tls server name or ->

Lines starting with ``#`` are comments.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from certs import fingerprint_sha256, write_secret_file
from client.errors import CliError, ConfigError

__all__ = ["FILE_NAME", "CaChanged", "KnownClusters", "Pin", "check_pin", "format_fingerprint",
           "parse_fingerprint"]

FILE_NAME = "known_clusters"
_HEX = frozenset("0123456789abcdef")


def format_fingerprint(hex_digest: str) -> str:
    """``sha256:<hex>``, the form the file, messages and ``--ca-fingerprint`` use."""
    return f"sha256:{hex_digest}"


def parse_fingerprint(text: str) -> str:
    """The lowercase hex of ``sha256:HEX``, ``HEX`` or ``AB:CD:...`` (openssl's form).

    Raises:
        ConfigError: not a SHA-256 fingerprint.
    """
    value = text.strip().lower()
    value = value.removeprefix("sha256:").removeprefix("sha256=").replace(":", "")
    if len(value) != 64 or not set(value) <= _HEX:
        raise ConfigError(f"--ca-fingerprint {text!r} is not a SHA-256 fingerprint: give sha256:<64 hex "
                          "digits>, as arcctl connect and arcctl show print it")
    return value


@dataclass(frozen=True)
class Pin:
    """What is known about one cluster at one relay."""

    relay_url: str
    cluster_id: str
    fingerprint: str  # lowercase hex
    server_name: str  # "" when the registration names none

    def line(self) -> str:
        return (f"{self.relay_url} {self.cluster_id} {format_fingerprint(self.fingerprint)} "
                f"{self.server_name or '-'}")


class CaChanged(CliError):
    """The relay hands out another serving CA (or server name) than the pinned one."""


class KnownClusters:
    """The known-clusters file at ``path`` (read on every call: small, and
    another arc-proxy may have written it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def beside(cls, config_path: Path | None) -> KnownClusters:
        """The file next to the client config (default location when None)."""
        from client.config import default_config_path

        return cls((config_path or default_config_path()).expanduser().parent / FILE_NAME)

    def pins(self) -> list[Pin]:
        """Every entry, in file order.

        Raises:
            ConfigError: the file cannot be read, or a line is malformed.
        """
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        except OSError as err:
            raise ConfigError(f"cannot read {self.path} ({err.strerror}): fix its permissions") from None
        out = []
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 4 or not parts[2].startswith("sha256:"):
                raise ConfigError(f"{self.path}:{number}: expected '<relay URL> <group>/<name> sha256:<hex> "
                                  "<server name or ->': fix or delete the line")
            try:
                fingerprint = parse_fingerprint(parts[2])
            except ConfigError:
                raise ConfigError(f"{self.path}:{number}: {parts[2]!r} is not a SHA-256 fingerprint: fix or "
                                  "delete the line") from None
            out.append(Pin(parts[0], parts[1], fingerprint, "" if parts[3] == "-" else parts[3]))
        return out

    def get(self, relay_url: str, cluster_id: str) -> Pin | None:
        """The pin of ``cluster_id`` at ``relay_url``, if any."""
        return next((p for p in self.pins() if (p.relay_url, p.cluster_id) == (relay_url, cluster_id)), None)

    def put(self, pin: Pin) -> None:
        """Record ``pin``, replacing the same cluster's entry (file mode 0600)."""
        keep = [p for p in self.pins() if (p.relay_url, p.cluster_id) != (pin.relay_url, pin.cluster_id)]
        self._write([*keep, pin])

    def forget(self, cluster_id: str, relay_url: str | None = None) -> int:
        """Remove ``cluster_id``'s entries (of one relay, or of all); returns how many."""
        pins = self.pins()
        keep = [p for p in pins if p.cluster_id != cluster_id or (relay_url and p.relay_url != relay_url)]
        if len(keep) != len(pins):
            self._write(keep)
        return len(pins) - len(keep)

    def _write(self, pins: list[Pin]) -> None:
        header = "# arc-proxy's pinned cluster serving CAs (see README: Pinned cluster CAs)\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_secret_file(self.path, header + "".join(p.line() + "\n" for p in pins))
        except OSError as err:
            raise ConfigError(f"cannot write {self.path} ({err.strerror}): fix its directory's "
                              "permissions") from None


def check_pin(known: KnownClusters, relay_url: str, cluster_id: str, ca_pem: bytes, server_name: str, *,
              expected: str | None = None, accept_new: bool = False) -> str | None:
    """Compare the relay's serving CA and server name of ``cluster_id`` with
    the pin, and record them where that is the user's intent.

    Args:
        expected: a fingerprint given out of band (``--ca-fingerprint``): the
            CA must have it; it then replaces any older pin.
        accept_new: replace a different pin with what the relay says now.

    Returns:
        A line to tell the user (first use, or a pin replaced), or None when
        the pin matched.

    Raises:
        CaChanged: the CA or server name differs from the pin or from
            ``expected``; nothing was recorded.
    """
    name = cluster_id.rsplit("/", 1)[-1]
    group = cluster_id.rsplit("/", 1)[0]
    try:
        actual = fingerprint_sha256(ca_pem)
    except ValueError:
        raise CliError(f"cluster {cluster_id}'s servingCaCertificate at the relay is not a PEM certificate: "
                       "re-register the cluster (arcctl connect)") from None
    now = Pin(relay_url, cluster_id, actual, server_name)
    if expected is not None:
        if parse_fingerprint(expected) != actual:
            raise CaChanged(f"cluster {cluster_id}'s serving CA at the relay is {format_fingerprint(actual)}, not "
                            f"{format_fingerprint(parse_fingerprint(expected))} as --ca-fingerprint says: do not "
                            "connect; ask the cluster's admin which is right")
        pinned = known.get(relay_url, cluster_id)
        if pinned == now:
            return None
        known.put(now)
        return (f"Pinned cluster {cluster_id}'s serving CA {format_fingerprint(actual)} (from --ca-fingerprint) "
                f"in {_display(known.path)}")
    pinned = known.get(relay_url, cluster_id)
    if pinned is None:
        known.put(now)
        return (f"First use of cluster {cluster_id}: pinned its serving CA {format_fingerprint(actual)} "
                f"in {_display(known.path)}")
    if pinned == now:
        return None
    if accept_new:
        known.put(now)
        return (f"Accepted cluster {cluster_id}'s new serving CA {format_fingerprint(actual)} (was "
                f"{format_fingerprint(pinned.fingerprint)}) in {_display(known.path)}")
    what = (f"serving CA {format_fingerprint(actual)}, pinned {format_fingerprint(pinned.fingerprint)}"
            if pinned.fingerprint != actual else
            f"TLS server name {server_name or '-'}, pinned {pinned.server_name or '-'}")
    raise CaChanged(f"cluster {cluster_id} changed at the relay ({what}): refusing to connect. If the cluster "
                    f"was re-registered on purpose, check the new fingerprint with its admin, then run "
                    f"arc-proxy -n {name} -g {group} --accept-new-ca (or arcctl known-cas forget -n {name} -g {group})")


def _display(path: Path) -> str:
    home = str(Path.home())
    s = str(path)
    return "~" + s[len(home):] if s.startswith(home + os.sep) else s
