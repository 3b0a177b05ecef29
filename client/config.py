"""The client config file (``$ARC_CONFIG``, default
``~/.config/cluster-connect/config.yaml``), docs/INTERFACES.md §6::

    relay: {url: https://127.0.0.1:8443, ca_file: /path/relay-ca.crt}
    resource_group: default
    auth:
      token_endpoint: https://idp/TENANT/oauth2/v2.0/token
      ca_file: /path/idp-ca.crt
      client_id: arc-cli
      scope: api://cluster-connect/.default
      username: demo@contoso.example   # password grant (demo), or
      password: ...
      client_secret: ...               # client-credentials grant, or
      token_command: "cmd that prints a token"
      lifetime: 5                        # sandbox issuer only: short-lived tokens (tests)
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from certs import write_secret_file
from client.errors import ConfigError

__all__ = ["AuthConfig", "ClientConfig", "default_config_path", "load_config", "write_config"]

DEFAULT_RESOURCE_GROUP = "default"


def default_config_path() -> Path:
    """``$ARC_CONFIG``, else ``$XDG_CONFIG_HOME/cluster-connect/config.yaml``, else
    ``~/.config/cluster-connect/config.yaml``."""
    env = os.environ.get("ARC_CONFIG")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "cluster-connect" / "config.yaml"


@dataclass
class AuthConfig:
    """How the client obtains the user's OIDC token."""

    token_endpoint: str | None = None
    ca_file: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    scope: str = "api://cluster-connect/.default"
    username: str | None = None
    password: str | None = None
    token_command: str | None = None
    # Requested token lifetime in seconds, sent as the sandbox issuer's
    # ``lifetime`` extension (tests use a few seconds); None: the issuer's default.
    lifetime: str | None = None


@dataclass
class ClientConfig:
    """Where the relay is and how to authenticate to it."""

    relay_url: str
    relay_ca_file: str | None = None
    resource_group: str = DEFAULT_RESOURCE_GROUP
    auth: AuthConfig = field(default_factory=AuthConfig)
    path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """The YAML document for this config (``path`` excluded, ``None``s dropped)."""
        auth = {k: v for k, v in asdict(self.auth).items() if v is not None}
        relay: dict[str, Any] = {"url": self.relay_url}
        if self.relay_ca_file:
            relay["ca_file"] = self.relay_ca_file
        return {"relay": relay, "resource_group": self.resource_group, "auth": auth}


def _str(doc: dict[str, Any], key: str, where: str) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, (str, int)):
        raise ConfigError(f"{where}.{key} must be a string")
    return str(value)


def load_config(path: Path | None = None) -> ClientConfig:
    """Read and validate the client config.

    Args:
        path: file to read; default :func:`default_config_path`.

    Returns:
        The parsed config.

    Raises:
        ConfigError: missing file, bad YAML or missing ``relay.url`` (one line with the fix).
    """
    p = path or default_config_path()
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(
            f"no client config at {p}: run 'arcctl demo' or write one (see docs/INTERFACES.md §6), "
            "or point $ARC_CONFIG at it") from None
    except OSError as err:
        raise ConfigError(f"cannot read client config {p}: {err.strerror}") from None
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"client config {p} is not valid YAML{at}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"client config {p} must be a YAML mapping")
    relay = doc.get("relay") or {}
    if not isinstance(relay, dict) or not relay.get("url"):
        raise ConfigError(f"client config {p} has no relay.url: add the relay's https URL")
    auth_doc = doc.get("auth") or {}
    if not isinstance(auth_doc, dict):
        raise ConfigError(f"client config {p}: auth must be a mapping")
    fields: dict[str, Any] = {k: _str(auth_doc, k, "auth") for k in AuthConfig.__dataclass_fields__
                              if auth_doc.get(k) is not None}
    auth = AuthConfig(**fields)
    return ClientConfig(
        relay_url=str(relay["url"]).rstrip("/"),
        relay_ca_file=_str(relay, "ca_file", "relay"),
        resource_group=_str(doc, "resource_group", "config") or DEFAULT_RESOURCE_GROUP,
        auth=auth,
        path=p,
    )


def write_config(config: ClientConfig, path: Path | None = None) -> Path:
    """Write the config atomically with mode 0600 (it may hold a demo password).

    Returns:
        The path written.
    """
    p = path or config.path or default_config_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    return write_secret_file(p, yaml.safe_dump(config.to_dict(), sort_keys=False))
