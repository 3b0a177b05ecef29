"""Identity checks shared by the relay and kube-aad-proxy.

``TokenValidator`` validates OIDC access tokens (discovery, cached JWKS with a
rate-limited refresh, algorithm allow-list, ``iss``/``aud``/time/``tid`` checks,
a validated-token cache) and returns a ``Principal``; a ``GroupResolver``
answers Entra's group overage. See docs/INTERFACES.md §5.
"""

from __future__ import annotations

from identity.errors import GroupResolutionError, IdentityError, TokenInvalid
from identity.group_source import (
    GroupSourceSection,
    GroupSourceSettings,
    OptionalGroupSource,
    parse_group_source,
)
from identity.groups import ClientCredentialsToken, GroupResolver, HttpGroupResolver
from identity.jwks import JwksCache
from identity.metrics import TokenValidatorCollector
from identity.oidc import ALLOWED_ALGORITHMS, TokenValidator, TrustedIssuer, token_digest
from identity.pop import SignedRequest, bound_key_id, is_signed_request, jwk_thumbprint, verify_shr
from identity.principal import Principal

__all__ = [
    "ALLOWED_ALGORITHMS",
    "ClientCredentialsToken",
    "GroupResolutionError",
    "GroupResolver",
    "GroupSourceSection",
    "GroupSourceSettings",
    "HttpGroupResolver",
    "IdentityError",
    "JwksCache",
    "OptionalGroupSource",
    "Principal",
    "SignedRequest",
    "TokenInvalid",
    "TokenValidator",
    "TokenValidatorCollector",
    "TrustedIssuer",
    "bound_key_id",
    "is_signed_request",
    "jwk_thumbprint",
    "parse_group_source",
    "token_digest",
    "verify_shr",
]

# identity/agent_assertion.py is written by another helper; re-export it once
# it exists so `from identity import sign_agent_assertion` works either way.
try:
    from identity.agent_assertion import (
        AgentAssertionVerifier,
        agent_audience,
        agent_audiences,
        sign_agent_assertion,
    )
except ImportError:  # pragma: no cover - until that module lands
    pass
else:
    __all__ += ["AgentAssertionVerifier", "agent_audience", "agent_audiences",
                "sign_agent_assertion"]
