"""Which bearer tokens kube-aad-proxy claims for its OIDC path (OidcGate)."""

from __future__ import annotations

import jwt

from agent.kube_aad_proxy.oidc import OidcGate, audiences_of, token_key
from identity import TokenValidator, TrustedIssuer

ISS = "https://idp.example/tenant/v2.0"
AUD = "api://cluster-connect"


def _token(**claims: object) -> str:
    return jwt.encode(dict(claims), "k" * 32, algorithm="HS256")


def test_gate_claims_trusted_issuer_and_our_audience_but_not_service_accounts() -> None:
    """Trusted ``iss``: ours. Untrusted ``iss`` addressed to our audience: ours
    too (validated, hence refused, never passed to the API server). A
    service-account token (API server issuer and audience): passed through."""
    validator = TokenValidator([TrustedIssuer(issuer=ISS, audiences=[AUD])])
    gate = OidcGate(validator, frozenset({ISS}), audiences_of(validator))
    assert gate.trusted_audiences == frozenset({AUD})
    cases = {
        _token(iss=ISS, aud="anything"): True,
        _token(iss="https://evil.example/v2.0", aud=AUD): True,
        _token(iss="https://evil.example/v2.0", aud=["x", AUD]): True,
        _token(iss="https://kubernetes.default.svc", aud=["https://kubernetes.default.svc"]): False,
        _token(iss="kubernetes/serviceaccount", sub="system:serviceaccount:a:b"): False,
        "opaque-token": False,
    }
    for token, ours in cases.items():
        assert gate.is_ours(token, token_key(token)) is ours, token
