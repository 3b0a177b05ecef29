"""One audit line per request on logger ``agent.audit``; never a token."""

from __future__ import annotations

import logging

audit_log = logging.getLogger("agent.audit")


def audit(cluster: str, principal: str, method: str, path: str, status: int, duration_s: float) -> None:
    """Log one finished (or refused) request.

    Args:
        cluster: Cluster name from the configuration ("" when unset).
        principal: The OIDC principal, or ``"passthrough"`` for caller credentials.
        method: HTTP method (the verb).
        path: Request path without its query string.
        status: Status code sent to the client (0 when none was sent).
        duration_s: From the request head to the end of the response.
    """
    if audit_log.isEnabledFor(logging.INFO):
        audit_log.info(
            "cluster=%s principal=%s verb=%s path=%s status=%d duration_ms=%.2f",
            cluster or "-", principal, method, path, status, duration_s * 1000.0,
        )
