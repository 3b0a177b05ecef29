"""The ``arcctl`` console entry: ``arcctl get-token`` with a valid cached token
answers from here, importing only the standard library; anything else runs
:func:`client.arcctl.main`.

kubectl runs ``arcctl get-token`` before every request. The full command line
imports pydantic, aiohttp, yaml and the rest (0.3-0.4 s); this path reads two
small files instead. It trusts the token cache only for a config file it has
seen: ``exec-index.json`` maps the config's real path and its mtime to where
the token is (written by the full path after each token it prints), so an
edited config always goes through the full path once.

Files (``$XDG_CACHE_HOME/cluster-connect``, else ``~/.cache/cluster-connect``,
all mode 0600): ``login-tokens.json`` (``arcctl login``'s accounts),
``tokens/*.json`` (the configured grants' tokens), ``exec-index.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time

# Not `from typing import ...`: typing costs a few ms of import on this path;
# mypy reads any `if TYPE_CHECKING:` block as taken.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["RENEW_MARGIN", "cache_dir", "config_path", "exec_credential", "fresh", "main", "read_cached"]

# Renew this long before expiry (kubelogin and az renew 5 min ahead), or at a
# quarter of the lifetime for tokens shorter than 20 min.
RENEW_MARGIN = 300.0
INDEX_FILE = "exec-index.json"


# os.path, not pathlib, and time, not datetime: each is a few ms of import on this path.
def cache_dir() -> str:
    """Where the token cache files live."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "cluster-connect")


def config_path(given: str | None) -> str:
    """The client config path as the full path resolves it (``--config``,
    ``$ARC_CONFIG``, XDG default), made absolute so both paths key it alike."""
    if given:
        p = os.path.expanduser(given)
    elif os.environ.get("ARC_CONFIG"):
        p = os.path.expanduser(os.environ["ARC_CONFIG"])
    else:
        base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
        p = os.path.join(base, "cluster-connect", "config.yaml")
    return os.path.realpath(p)


def _read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def fresh(expires_at: float, issued_at: float, now: float | None = None) -> bool:
    """Whether a token expiring at ``expires_at`` can still be handed out."""
    lifetime = expires_at - issued_at
    margin = min(RENEW_MARGIN, lifetime / 4) if issued_at > 0 and lifetime > 0 else RENEW_MARGIN
    return (time.time() if now is None else now) + margin < expires_at


def exec_credential(token: str, expires_at: float) -> str:
    """The client.authentication.k8s.io/v1 ExecCredential kubectl reads."""
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires_at))
    return json.dumps({
        "kind": "ExecCredential",
        "apiVersion": "client.authentication.k8s.io/v1",
        "spec": {"interactive": False},
        "status": {"token": token, "expirationTimestamp": expires},
    })


def read_cached(config: str) -> tuple[str, float] | None:
    """(token, expires_at) cached for ``config`` if its index entry matches
    the file's current mtime and the token is fresh; else None."""
    try:
        index = _read_json(os.path.join(cache_dir(), INDEX_FILE))
        entry = index["configs"][config]
        if entry["mtime_ns"] != os.stat(config).st_mtime_ns:
            return None
        doc: Any = _read_json(entry["file"])
        if entry.get("account"):
            doc = doc["accounts"][entry["account"]]
        token, expires_at = str(doc["access_token"]), float(doc["expires_at"])
        if not token or not fresh(expires_at, float(doc.get("issued_at") or 0.0)):
            return None
        return token, expires_at
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no index, no entry, a damaged file: the full path decides


def _config_flag(argv: list[str]) -> tuple[bool, str | None]:
    """(whether argv is a plain ``get-token [--config P]``, P)."""
    if not argv or argv[0] != "get-token":
        return False, None
    rest = argv[1:]
    if not rest:
        return True, None
    if len(rest) == 2 and rest[0] == "--config":
        return True, rest[1]
    if len(rest) == 1 and rest[0].startswith("--config="):
        return True, rest[0].split("=", 1)[1]
    return False, None


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``arcctl``."""
    args = sys.argv[1:] if argv is None else argv
    plain, given = _config_flag(args)
    if plain:
        cached = read_cached(config_path(given))
        if cached is not None:
            sys.stdout.write(exec_credential(*cached) + "\n")
            return 0
    from client.arcctl import main as full_main

    return full_main(args)


if __name__ == "__main__":
    sys.exit(main())
