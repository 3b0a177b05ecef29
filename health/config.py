"""The ``health`` section of the relay's and the agent's config files."""

from __future__ import annotations

from pydantic import Field, field_validator

from configfile import ConfigModel, parse_host_port
from health.listener import DEFAULT_CONNECTION_SECONDS, DEFAULT_MAX_CONNECTIONS, HealthLimits

__all__ = ["HealthSection"]


class HealthSection(ConfigModel):
    """Where and how the ``/livez`` ``/readyz`` ``/metrics`` listener serves."""

    listen: str = Field(default="127.0.0.1:0", description="`host:port` of the plain-HTTP `/livez` `/readyz` "
                        "`/metrics` listener: keep it private (port 0: any free port, logged).")
    max_connections: int = Field(default=DEFAULT_MAX_CONNECTIONS, ge=1, description="Connections held at once; "
                                 "beyond it new ones are closed at accept.")
    connection_seconds: float = Field(default=DEFAULT_CONNECTION_SECONDS, gt=0, description="A connection is "
                                      "closed this long after accept.")

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        parse_host_port(value)
        return value

    def address(self) -> tuple[str, int]:
        """(host, port) of ``listen``."""
        return parse_host_port(self.listen)

    def limits(self) -> HealthLimits:
        return HealthLimits(max_connections=self.max_connections, connection_seconds=self.connection_seconds)
