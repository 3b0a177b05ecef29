"""Group overage: a user in 250 groups gets `_claim_sources`; the validator
resolves the groups through the sandbox issuer's member-groups endpoint, and
fails closed when it cannot."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from identity import (
    ClientCredentialsToken,
    HttpGroupResolver,
    TokenInvalid,
    TokenValidator,
    TrustedIssuer,
)
from sandbox.idp import SandboxIdp

AUD = "api://cluster-connect"
SP_ID, SP_SECRET = "2788b2a2-9ad3-4af4-8567-a7214ea67c4a", "ci-secret"
DEVELOPERS = "1babbe50-9daf-4990-acad-d801629bb7a8"
OVERAGE_OID = "0de74a08-180b-45bd-a341-31ff9245995e"


def _trusted(idp: SandboxIdp) -> list[TrustedIssuer]:
    return [TrustedIssuer(issuer=idp.issuer, audiences=[AUD], ca_pem=idp.ca_pem)]


def _sp_credential(idp: SandboxIdp, secret: str = SP_SECRET) -> ClientCredentialsToken:
    return ClientCredentialsToken(idp.token_endpoint, SP_ID, secret, AUD + "/.default", ca_pem=idp.ca_pem)


async def test_overage_resolved_through_member_groups_endpoint(idp: SandboxIdp) -> None:
    """The overage user's 250 groups come from getMemberObjects, fetched with an SP token."""
    resolver = HttpGroupResolver(_sp_credential(idp))
    v = TokenValidator(_trusted(idp), group_resolver=resolver)
    try:
        p = await v.validate(idp.mint("overage"))
        assert p.has_group_overage and p.oid == OVERAGE_OID
        assert len(p.groups) == 250 and DEVELOPERS in p.groups
        assert idp.request_counts["member_groups"] == 1
    finally:
        await v.close()


async def test_overage_groups_cached_per_user(idp: SandboxIdp) -> None:
    """Two different tokens of the same overage user cost one member-groups lookup."""
    resolver = HttpGroupResolver(_sp_credential(idp))
    v = TokenValidator(_trusted(idp), group_resolver=resolver)
    try:
        a = await v.validate(idp.mint("overage"))
        b = await v.validate(idp.mint("overage", lifetime=600))
        assert a.groups == b.groups and resolver.fetch_count == 1
        assert idp.request_counts["member_groups"] == 1 and idp.request_counts["token"] == 1
    finally:
        await v.close()


async def test_overage_with_endpoint_template(idp: SandboxIdp) -> None:
    """A configured endpoint template (Graph style, {oid}) is used instead of the token's source."""
    template = idp.url + "/v1.0/users/{oid}/getMemberObjects"
    resolver = HttpGroupResolver(_sp_credential(idp), endpoint_template=template)
    v = TokenValidator(_trusted(idp), group_resolver=resolver)
    try:
        token = idp.mint("overage", _claim_sources={"src1": {"endpoint": "https://example.invalid/x"}})
        assert len((await v.validate(token)).groups) == 250
    finally:
        await v.close()


async def test_overage_refused_without_resolver(idp: SandboxIdp) -> None:
    """No group source configured: the overage token is refused (fail closed), not passed groupless."""
    v = TokenValidator(_trusted(idp))
    try:
        with pytest.raises(TokenInvalid) as info:
            await v.validate(idp.mint("overage"))
        assert info.value.reason == "group overage could not be resolved"
    finally:
        await v.close()


async def test_overage_refused_when_source_rejects_credential(idp: SandboxIdp) -> None:
    """A credential the member-groups endpoint rejects (401) means refusal."""
    v = TokenValidator(_trusted(idp), group_resolver=HttpGroupResolver("not-a-token"))
    try:
        with pytest.raises(TokenInvalid, match="group overage could not be resolved"):
            await v.validate(idp.mint("overage"))
        assert idp.request_counts["member_groups"] == 1
    finally:
        await v.close()


async def test_overage_refused_when_credential_unobtainable(idp: SandboxIdp) -> None:
    """A service principal with a wrong secret gets no token, so the overage token is refused."""
    resolver = HttpGroupResolver(_sp_credential(idp, secret="wrong"))
    v = TokenValidator(_trusted(idp), group_resolver=resolver)
    try:
        with pytest.raises(TokenInvalid, match="group overage could not be resolved"):
            await v.validate(idp.mint("overage"))
        assert idp.request_counts.get("member_groups", 0) == 0
    finally:
        await v.close()


async def test_overage_refused_for_host_not_allowed(idp: SandboxIdp) -> None:
    """With allowed_hosts, a source on another host is never called (the credential stays home)."""
    resolver = HttpGroupResolver(_sp_credential(idp), allowed_hosts=["graph.microsoft.com"])
    v = TokenValidator(_trusted(idp), group_resolver=resolver)
    try:
        with pytest.raises(TokenInvalid, match="group overage could not be resolved"):
            await v.validate(idp.mint("overage"))
        assert idp.request_counts.get("member_groups", 0) == 0
    finally:
        await v.close()


async def test_overage_user_token_not_cached_when_refused(idp: SandboxIdp) -> None:
    """A refused overage token is verified again next time (refusals are not cached)."""
    v = TokenValidator(_trusted(idp))
    try:
        token = idp.mint("overage")
        for _ in range(2):
            with pytest.raises(TokenInvalid):
                await v.validate(token)
        assert v.signature_verifications == 2
    finally:
        await v.close()


class BrokenResolver:
    """A group source with a bug: raises something other than GroupResolutionError."""

    async def resolve(self, claims: Mapping[str, Any], ca_pem: bytes | str | None) -> list[str]:
        raise RuntimeError("bug")

    async def close(self) -> None:
        return None


async def test_overage_refused_when_resolver_crashes(idp: SandboxIdp) -> None:
    """A resolver that crashes still fails closed with the overage reason, not an exception leak."""
    v = TokenValidator(_trusted(idp), group_resolver=BrokenResolver())
    try:
        with pytest.raises(TokenInvalid, match="group overage could not be resolved"):
            await v.validate(idp.mint("overage"))
        assert (await v.validate(idp.mint("demo"))).groups  # non-overage users unaffected
    finally:
        await v.close()
