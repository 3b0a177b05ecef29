"""The client config file (``$ARC_CONFIG``, default
``~/.config/cluster-connect/config.yaml``); every key: docs/config.md::

    relay: {url: https://127.0.0.1:8443, ca_file: /path/relay-ca.crt}
    resource_group: default
    auth:
      issuer: https://idp/TENANT/v2.0     # arcctl login (device code or browser), or
      login: devicecode                  # or browser
      token_endpoint: https://idp/TENANT/oauth2/v2.0/token
      ca_file: /path/idp-ca.crt
      client_id: arc-cli
      scope: api://cluster-connect/.default         # kubectl's token (what clusters see)
      relay_scope: api://cluster-connect-relay/.default   # the relay's own token (omit: scope)
      audience: null                    # or resource: sent with every token request when set
      username: demo@contoso.example   # password grant (demo), or
      password: ...
      client_secret: ...               # client-credentials grant (or login: client_credentials
      client_secret_file: /path/secret #   with one of these three), or
      client_certificate_file: /path/cert.pem   # + client_key_file: private_key_jwt
      federated_token_file: /var/run/secrets/azure/tokens/azure-identity-token
      token_command: "cmd that prints a token"
      lifetime: 5                        # sandbox issuer only: short-lived tokens (tests)
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field

from certs import write_secret_file
from configfile import ConfigModel, Secret, Text, load_config_file

__all__ = ["AuthConfig", "ClientConfig", "ClientFile", "default_config_path", "load_config", "write_config"]

DEFAULT_RESOURCE_GROUP = "default"
DEFAULT_SCOPE = "api://cluster-connect/.default"


def default_config_path() -> Path:
    """``$ARC_CONFIG``, else ``$XDG_CONFIG_HOME/cluster-connect/config.yaml``, else
    ``~/.config/cluster-connect/config.yaml``."""
    env = os.environ.get("ARC_CONFIG")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "cluster-connect" / "config.yaml"


class RelaySection(ConfigModel):
    """``relay``: where the relay is."""

    url: str = Field(min_length=1, description="The relay's base URL, e.g. `https://relay.example.com`.")
    ca_file: Text | None = Field(default=None, description="CA bundle the relay's certificate chains to "
                                 "(omit: the system trust store).")


class AuthSection(ConfigModel):
    """``auth``: how the client obtains the user's OIDC token."""

    issuer: Text | None = Field(default=None, description="OIDC issuer URL for `arcctl login` (its "
                                "`.well-known/openid-configuration` names the endpoints; TLS checked "
                                "with `ca_file`). Omit: the grants below, with `token_endpoint`.")
    login: Literal["devicecode", "browser", "client_credentials"] = Field(
        default="devicecode", description="How `arcctl login` signs in: `devicecode` (a code to enter on "
        "any device) or `browser` (authorization code + PKCE, redirect to a loopback port); "
        "`client_credentials`: no sign-in, a workload's client-credentials grant (token endpoint from "
        "`issuer` or `token_endpoint`; `client_id` and `federated_token_file` default to $AZURE_CLIENT_ID "
        "and $AZURE_FEDERATED_TOKEN_FILE, `issuer` to $AZURE_AUTHORITY_HOST/$AZURE_TENANT_ID/v2.0).")
    scopes: list[Text] | None = Field(default=None, description="Scopes `arcctl login` requests "
                                      "(omit: `scope` plus `openid profile offline_access`).")
    token_endpoint: Text | None = Field(default=None, description="The identity provider's OAuth2 token endpoint.")
    ca_file: Text | None = Field(default=None, description="CA bundle for the token endpoint (omit: system trust).")
    client_id: Text | None = Field(default=None, description="OAuth2 client id of the CLI application.")
    client_secret: Annotated[Text | None, Secret()] = Field(default=None, description="Client-credentials grant: the client secret (a service principal).")
    client_secret_file: Text | None = Field(default=None, description="Client-credentials grant: a file "
                                            "holding the client secret (read on every token request).")
    client_certificate_file: Text | None = Field(
        default=None, description="Client-credentials grant with a certificate: its PEM file; the client "
        "signs a `private_key_jwt` assertion with its key (RFC 7523).")
    client_key_file: Text | None = Field(default=None, description="The certificate's PEM private key "
                                         "(omit: in `client_certificate_file`).")
    federated_token_file: Text | None = Field(
        default=None, description="Client-credentials grant with workload identity federation: a file "
        "holding a token of a trusted issuer (a Kubernetes service-account token, a CI job's OIDC token), "
        "sent as the client assertion; read again on every token request because it rotates.")
    scope: Text = Field(default=DEFAULT_SCOPE, description="Scope requested for the token kubectl presents "
                        "to clusters (and to the relay when `relay_scope` is unset).")
    relay_scope: Text | None = Field(default=None, description="Scope requested for the relay's own token "
                                     "(arcctl's management calls, arc-proxy's relay session), an audience no "
                                     "cluster ever sees (docs/identity-providers.md); omit: `scope` for both.")
    audience: Text | None = Field(default=None, description="Sent as `audience` with every token request "
                                  "(Auth0, Okta and others issue a JWT access token for an API only when "
                                  "asked for its audience; without it, an opaque token the relay refuses).")
    resource: Text | None = Field(default=None, description="Sent as `resource` with every token request "
                                  "(RFC 8707; Entra ID v1 endpoints and AD FS name the API this way).")
    directory_url: Text | None = Field(default=None, description="A Graph-shaped user directory "
                                       "(`GET {url}/users/{name}` gives `id`) that `arcctl role assign` "
                                       "resolves user names with (the sandbox issuer: `<its url>/v1.0`).")
    username: Text | None = Field(default=None, description="Password grant (demo issuer): the user name.")
    password: Annotated[Text | None, Secret()] = Field(default=None, description="Password grant: the password.")
    token_command: Text | None = Field(default=None, description="A command that prints a token on stdout "
                                       "(used instead of the endpoint).")
    lifetime: Text | None = Field(default=None, description="Sandbox issuer only: requested token lifetime in "
                                  "seconds (tests); omit: the issuer's default.")
    pop: bool = Field(default=False, description="kubectl gets proof-of-possession tokens (docs/pop.md): "
                      "`arc-proxy` writes `arcctl get-token --pop` into the kubeconfig; the issuer must "
                      "bind tokens to a key (`req_cnf`, as Entra ID does).")


class ClientFile(ConfigModel):
    """The client config file."""

    relay: RelaySection = Field(description="Where the relay is (required).")
    resource_group: Text = Field(default=DEFAULT_RESOURCE_GROUP, description="Resource group used when `-g` is not given.")
    auth: AuthSection = Field(default=AuthSection(), description="How to obtain the user's OIDC token.")


@dataclass
class AuthConfig:
    """How the client obtains the user's OIDC token (``AuthSection`` once loaded)."""

    issuer: str | None = None
    login: str = "devicecode"
    scopes: list[str] | None = None
    token_endpoint: str | None = None
    ca_file: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    client_secret_file: str | None = None
    client_certificate_file: str | None = None
    client_key_file: str | None = None
    federated_token_file: str | None = None
    scope: str = DEFAULT_SCOPE
    # The relay's own audience, never sent to a cluster; None: ``scope`` (old configs).
    relay_scope: str | None = None
    # Set by for_relay(): the scopes `arcctl login`'s account was signed in
    # with, whose refresh token then asks for the relay's token.
    signed_in_scopes: list[str] | None = None
    # Token-request parameters a provider may need to issue a JWT access token
    # for our API (``audience``: Auth0/Okta; ``resource``: RFC 8707, Entra v1).
    audience: str | None = None
    resource: str | None = None
    # Where ``arcctl role assign`` resolves a user name to its object id.
    directory_url: str | None = None
    username: str | None = None
    password: str | None = None
    token_command: str | None = None
    # Requested token lifetime in seconds, sent as the sandbox issuer's
    # ``lifetime`` extension (tests use a few seconds); None: the issuer's default.
    lifetime: str | None = None
    # kubectl gets proof-of-possession tokens bound to one cluster (client/pop.py).
    pop: bool = False

    def token_parameters(self) -> dict[str, str]:
        """``audience`` / ``resource`` for every token request, when configured."""
        return {k: v for k, v in (("audience", self.audience), ("resource", self.resource)) if v}

    def for_relay(self) -> AuthConfig:
        """How to get the token the relay accepts: ``relay_scope`` instead of
        ``scope`` when set (a bearer token, never bound to a key), else this config."""
        if not self.relay_scope:
            return self
        return replace(self, scope=self.relay_scope, scopes=None, pop=False,
                       signed_in_scopes=self.login_scopes())

    def cluster_audience(self) -> str | None:
        """The resource ``scope`` names (``api://x/.default`` -> ``api://x``),
        when the relay has its own scope; None otherwise."""
        if not self.relay_scope:
            return None
        for item in self.scope.split():
            resource, sep, _ = item.rpartition("/")
            if sep and resource and "://" in item:
                return resource
        return None

    def login_scopes(self) -> list[str]:
        """Scopes ``arcctl login`` asks for: ``scopes``, else ``scope`` with the
        OIDC scopes that give an id token and a refresh token."""
        return list(self.scopes) if self.scopes else [self.scope, "openid", "profile", "offline_access"]


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
        auth = {k: v for k, v in asdict(self.auth).items()
                if v is not None and not (k == "login" and v == "devicecode") and not (k == "pop" and not v)}
        relay: dict[str, Any] = {"url": self.relay_url}
        if self.relay_ca_file:
            relay["ca_file"] = self.relay_ca_file
        return {"relay": relay, "resource_group": self.resource_group, "auth": auth}


def load_config(path: Path | None = None) -> ClientConfig:
    """Read and validate the client config.

    Args:
        path: file to read; default :func:`default_config_path`.

    Returns:
        The parsed config.

    Raises:
        ConfigError: missing file, bad YAML or a bad key (one line per problem).
    """
    p = path or default_config_path()
    doc = load_config_file(p, ClientFile, missing=(
        "no client config at {path}: run 'arcctl demo' or write one (see docs/config.md), "
        "or point $ARC_CONFIG at it"))
    return ClientConfig(
        relay_url=doc.relay.url.rstrip("/"),
        relay_ca_file=doc.relay.ca_file or None,
        resource_group=doc.resource_group or DEFAULT_RESOURCE_GROUP,
        auth=AuthConfig(**doc.auth.model_dump()),
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
