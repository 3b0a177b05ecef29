"""Proof-of-possession at kube-aad-proxy (docs/pop.md): a signed HTTP request
(SHR) is accepted only when its ``u`` is this cluster, its signature verifies
with the key inside it, its ``ts`` is fresh and the access token inside is
bound (``cnf``) to that same key; with ``require_pop`` a bare bearer token from
a trusted issuer is refused. A bound access token sent bare is always refused:
whoever holds it without the key is not its owner.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography import x509

from identity import (
    SignedRequest,
    TokenInvalid,
    bound_key_id,
    is_signed_request,
    token_digest,
    verify_shr,
)

if TYPE_CHECKING:
    from certs import IssuedCertificate

__all__ = ["DEFAULT_POP_MAX_AGE", "DEFAULT_POP_SKEW", "PopPolicy", "binding_refusal", "is_signed_request", "serving_names"]

# kubelogin's PoP tokens are reused by kubectl until their ExecCredential
# expiry; 5 min bounds how long a captured SHR is worth anything (arcctl asks
# for a new one after 4, client/pop.py SHR_LIFETIME).
DEFAULT_POP_MAX_AGE = 300.0
# Laptops' clocks drift; the same tolerance as for exp/nbf (identity/oidc.py).
DEFAULT_POP_SKEW = 60.0
# Verified SHRs kept (by SHA-256): kubectl sends one SHR for minutes, so its
# signature is checked once, as a bearer token's is; ~3 KiB each.
SHR_CACHE_SIZE = 10_000


@dataclass
class PopPolicy:
    """Which SHRs this cluster accepts.

    Args:
        targets: the names this cluster answers to as ``u`` (its serving
            certificate's DNS names, the kubeconfig's ``tls-server-name``).
        required: refuse a bare bearer token from a trusted issuer.
        max_age: seconds an SHR's ``ts`` may lie in the past.
        skew: seconds of clock tolerance either way.
        clock: wall clock (tests inject one).
    """

    targets: frozenset[str]
    required: bool = False
    max_age: float = DEFAULT_POP_MAX_AGE
    skew: float = DEFAULT_POP_SKEW
    clock: Callable[[], float] = field(default=time.time, compare=False)
    _verified: OrderedDict[bytes, SignedRequest] = field(default_factory=OrderedDict, compare=False, repr=False)
    #: SHR signatures checked (cache hits do not count)
    verifications: int = field(default=0, compare=False)

    def unwrap(self, token: str) -> SignedRequest:
        """The verified SHR (its ``at`` still to be validated); one seen before
        is answered from a bounded cache while its ``ts`` is still fresh.

        Raises:
            identity.TokenInvalid: why it is refused.
        """
        now = self.clock()
        key = token_digest(token)
        hit = self._verified.get(key)
        if hit is not None:
            if hit.ts >= now - self.max_age - self.skew:
                self._verified.move_to_end(key)
                return hit
            del self._verified[key]
            raise TokenInvalid("proof-of-possession token expired")
        self.verifications += 1
        shr = verify_shr(token, targets=self.targets, now=now, max_age=self.max_age, skew=self.skew)
        self._verified[key] = shr
        while len(self._verified) > SHR_CACHE_SIZE:
            self._verified.popitem(last=False)
        return shr


def binding_refusal(policy: PopPolicy, claims: Mapping[str, Any], pop_key: str | None) -> str | None:
    """Why a validated access token may not be used as presented, or None.

    Args:
        policy: this cluster's PoP policy.
        claims: the access token's validated claims.
        pop_key: the thumbprint of the key that signed the SHR, None for a bare bearer token.
    """
    bound = bound_key_id(claims)
    if pop_key is None:
        if bound is not None:
            return "the token is bound to a key: send it as a proof-of-possession token (arcctl get-token --pop)"
        if policy.required:
            return "this cluster requires proof-of-possession tokens (arcctl get-token --pop)"
        return None
    if bound is None:
        return "the access token inside the proof-of-possession token is not bound to a key"
    if bound != pop_key:
        return "the access token is bound to another key than the one that signed the request"
    return None


def serving_names(serving_cert: IssuedCertificate) -> frozenset[str]:
    """The DNS names of the serving certificate: what kubectl verifies as
    ``tls-server-name``, hence the ``u`` of a PoP token meant for this cluster."""
    cert = x509.load_pem_x509_certificate(serving_cert.certificate_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return frozenset()
    return frozenset(san.get_values_for_type(x509.DNSName))
