"""Prometheus view of one ``TokenValidator``, on the registry of the daemon using it.

The validator counts in plain integers (``signature_verifications``,
``validations``); :class:`TokenValidatorCollector` reads them at scrape time,
so the relay and kube-aad-proxy each expose their own validator under their
own prefix (``arc_relay_``, ``arc_kube_aad_proxy_``) and nothing is registered
in prometheus_client's global registry, which no daemon serves.

Label values are bounded: ``result`` is ``ok``, ``cached`` or a refusal
reason from the fixed vocabulary of identity/errors.py; ``issuer`` is one of
the configured trusted issuers.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from identity.oidc import TokenValidator


class TokenValidatorCollector:
    """Collects one validator's counts as ``<prefix>_token_*`` and ``<prefix>_oidc_*``.

    Register it with ``registry.register(TokenValidatorCollector(v, "arc_relay"))``.

    Args:
        validator: The validator, or None (no issuer configured: counts stay 0).
        prefix: The daemon's metric prefix, e.g. ``arc_relay``.
    """

    def __init__(self, validator: TokenValidator | None, prefix: str) -> None:
        self.validator = validator
        self.prefix = prefix

    def _families(self) -> tuple[CounterMetricFamily, CounterMetricFamily, GaugeMetricFamily,
                                 CounterMetricFamily]:
        p = self.prefix
        return (
            CounterMetricFamily(f"{p}_token_signature_verifications",
                                "OIDC token signatures verified (validated-token cache misses "
                                "that reached the crypto)."),
            CounterMetricFamily(f"{p}_token_validations",
                                "OIDC token validations by result: ok, cached, or the refusal reason.",
                                labels=["result"]),
            GaugeMetricFamily(f"{p}_oidc_signing_keys",
                              "Signing keys held per trusted issuer (0: not fetched yet or unreachable).",
                              labels=["issuer"]),
            CounterMetricFamily(f"{p}_oidc_key_refreshes",
                                "JWKS fetches per trusted issuer (successful or not).",
                                labels=["issuer"]),
        )

    def describe(self) -> Iterable[Metric]:
        """The families without samples (lets the registry check names without a scrape)."""
        return self._families()

    def collect(self) -> Iterable[Metric]:
        """The current counts."""
        verified, validations, keys, refreshes = self._families()
        v = self.validator
        if v is not None:
            verified.add_metric([], v.signature_verifications)
            for result, count in sorted(v.validations.items()):
                validations.add_metric([result], count)
            for issuer in v.issuers:
                jwks = v.jwks(issuer.issuer)
                keys.add_metric([issuer.issuer], len(jwks.kids))
                refreshes.add_metric([issuer.issuer], jwks.refresh_count)
        else:
            verified.add_metric([], 0)
        return (verified, validations, keys, refreshes)
