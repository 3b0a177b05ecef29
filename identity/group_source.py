"""The ``oidc.group_source`` configuration section, shared by the relay and
kube-aad-proxy, and the :class:`~identity.groups.HttpGroupResolver` it builds.

Example (YAML, under ``oidc:`` in either config file)::

    group_source:
      token_endpoint: https://login.example.com/TENANT/oauth2/v2.0/token
      client_id: 2788b2a2-...              # a service principal allowed to read memberships
      client_secret_file: /etc/arc/group-source.secret   # or client_secret: "..." (demo only)
      scope: https://graph.microsoft.com/.default
      endpoint_template: null              # null: the endpoint named in the token's _claim_sources
      allowed_hosts: [graph.microsoft.com] # the credential is never sent anywhere else
      ca_file: null                        # CA for token endpoint and member-groups endpoint
      cache_ttl_seconds: 600

Without this section an overage token (more than 200 groups) is refused:
fail closed, never "no groups".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import BeforeValidator, Field, field_validator, model_validator

from configfile import ConfigModel, Problems, Secret, Text, validate_config
from identity.groups import DEFAULT_GROUP_CACHE_TTL, ClientCredentialsToken, HttpGroupResolver

# A client secret file is a line of text; anything larger is a wrong path.
MAX_SECRET_BYTES = 16 * 1024


class GroupSourceSection(ConfigModel):
    """``oidc.group_source``: resolves overage tokens (more than 200 groups)."""

    token_endpoint: str = Field(description="OAuth2 token endpoint (https) where the service "
                                "principal below gets its own token.")
    client_id: Text = Field(min_length=1, description="Client id of a service principal allowed to "
                            "read group memberships.")
    client_secret_file: str | None = Field(default=None, description="File holding its client secret "
                                           "(one line; relative: to the config file's folder).")
    client_secret: Annotated[Text | None, Secret()] = Field(default=None, description="The client secret itself (demo only; prefer client_secret_file).")
    scope: Text = Field(min_length=1, description="Scope requested, e.g. "
                        "`https://graph.microsoft.com/.default`.")
    endpoint_template: str | None = Field(default=None, description="Member-groups endpoint; `{oid}` is the "
                                          "user's object id. Unset: the endpoint named in the "
                                          "token's `_claim_sources`.")
    allowed_hosts: list[str] | None = Field(default=None, description="If set, only member-groups endpoints on "
                                            "these hosts are called (the credential is sent nowhere else).")
    ca_file: str | None = Field(default=None, description="CA bundle for the token and member-groups endpoints "
                                "(unset: system trust).")
    cache_ttl_seconds: float = Field(default=DEFAULT_GROUP_CACHE_TTL, ge=0, description="How long a user's "
                                     "resolved groups are cached.")

    @field_validator("token_endpoint")
    @classmethod
    def _https(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError("expected an https:// URL")
        return value

    @model_validator(mode="after")
    def _one_secret(self) -> Self:
        if not self.client_secret_file and not self.client_secret:
            raise ValueError("needs client_secret_file (or client_secret)")
        return self

    def settings(self, base_dir: Path, where: str, problems: Problems) -> GroupSourceSettings | None:
        """The section with its files read (``None`` with problems recorded if one cannot be)."""
        secret = self.client_secret or ""
        if self.client_secret_file:
            raw = problems.read(base_dir, self.client_secret_file, f"{where}.client_secret_file",
                                limit=MAX_SECRET_BYTES)
            secret = raw.decode(errors="replace").strip() if raw is not None else ""
            if raw is not None and not secret:
                problems.add(f"{where}.client_secret_file", "the file is empty; write the secret into it")
        ca_pem = problems.read(base_dir, self.ca_file, f"{where}.ca_file")
        if not secret or (self.ca_file and ca_pem is None):
            return None
        return GroupSourceSettings(
            token_endpoint=self.token_endpoint,
            client_id=self.client_id,
            client_secret=secret,
            scope=self.scope,
            endpoint_template=self.endpoint_template or None,
            allowed_hosts=tuple(self.allowed_hosts) if self.allowed_hosts else None,
            ca_pem=ca_pem,
            cache_ttl=self.cache_ttl_seconds,
        )


def _empty_is_none(value: Any) -> Any:
    # ``group_source: {}`` (or "") has always meant "no group source".
    return None if value in ({}, "") else value


# The field type of ``oidc.group_source`` in the relay's and the agent's schema.
OptionalGroupSource = Annotated[GroupSourceSection | None, BeforeValidator(_empty_is_none)]


@dataclass(frozen=True)
class GroupSourceSettings:
    """A parsed ``group_source`` section (files already read)."""

    token_endpoint: str
    client_id: str
    client_secret: str
    scope: str
    endpoint_template: str | None = None
    allowed_hosts: tuple[str, ...] | None = None
    ca_pem: bytes | None = None
    cache_ttl: float = DEFAULT_GROUP_CACHE_TTL

    def __repr__(self) -> str:  # never show the secret
        return (f"GroupSourceSettings(token_endpoint={self.token_endpoint!r}, "
                f"client_id={self.client_id!r}, scope={self.scope!r})")

    def build(self) -> HttpGroupResolver:
        """The resolver for ``TokenValidator(group_resolver=...)``."""
        credential = ClientCredentialsToken(self.token_endpoint, self.client_id, self.client_secret,
                                            self.scope, ca_pem=self.ca_pem)
        return HttpGroupResolver(credential, endpoint_template=self.endpoint_template,
                                 allowed_hosts=self.allowed_hosts, ca_pem=self.ca_pem,
                                 cache_ttl=self.cache_ttl)


def parse_group_source(raw: Any, base_dir: Path, where: str = "oidc.group_source") -> GroupSourceSettings | None:
    """Parse one ``group_source`` mapping (None/empty: no group source).

    Args:
        raw: the YAML value.
        base_dir: relative file paths are resolved against it.
        where: the section's key path, for messages.

    Raises:
        ConfigError: one line per problem, naming the key.
    """
    raw = _empty_is_none(raw)
    if raw is None:
        return None
    section = validate_config(GroupSourceSection, raw, "config", at=where)
    problems = Problems("config")
    settings = section.settings(base_dir, where, problems)
    problems.raise_if_any()
    return settings
