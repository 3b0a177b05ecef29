"""The token-validation keys both daemons read (relay ``oidc.*``, agent
``kube_aad_proxy.oidc.*``): clock skew and how often signing keys are fetched."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from configfile import ConfigModel
from identity.jwks import DEFAULT_MAX_KEY_AGE, DEFAULT_MIN_REFRESH_INTERVAL
from identity.oidc import DEFAULT_CLOCK_SKEW

# Beyond ten minutes a "skew" is a broken clock, and every expired token would
# live that much longer.
MAX_CLOCK_SKEW = 600.0


class ValidatorKeys(ConfigModel):
    """Token-validation keys shared by every ``oidc`` section."""

    clock_skew_seconds: float = Field(default=DEFAULT_CLOCK_SKEW, ge=0, le=MAX_CLOCK_SKEW,
                                      description="Tolerance for `exp`, `nbf` and `iat` against this host's clock.")
    jwks_refresh_seconds: float = Field(default=DEFAULT_MAX_KEY_AGE, gt=0, description="Signing keys held "
                                        "longer than this are fetched again from each issuer's JWKS.")
    jwks_min_refresh_seconds: float = Field(default=DEFAULT_MIN_REFRESH_INTERVAL, ge=0, description="At most "
                                            "one JWKS fetch per issuer this often (an unknown `kid` waits).")

    def validator_kwargs(self) -> dict[str, Any]:
        """The ``identity.TokenValidator`` keyword arguments these keys set."""
        return {"clock_skew": self.clock_skew_seconds, "jwks_max_age": self.jwks_refresh_seconds,
                "jwks_min_refresh_interval": self.jwks_min_refresh_seconds}
