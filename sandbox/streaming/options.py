"""Exec/attach options from the query string, and the exit-status messages."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from sandbox.streaming.request import UpgradeRequest

# Channel protocol names (apimachinery pkg/util/remotecommand/constants.go).
V5, V4, V3, V2, V1 = ("v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io",
                      "v2.channel.k8s.io", "channel.k8s.io")
V4_BASE64, V1_BASE64 = "v4.base64.channel.k8s.io", "base64.channel.k8s.io"
PORTFORWARD_SPDY = "portforward.k8s.io"
PORTFORWARD_WS_TUNNEL = "SPDY/3.1+portforward.k8s.io"
# Newest first: SPDY picks the first *client-offered* one we support.
SPDY_EXEC_PROTOCOLS = (V5, V4, V3, V2, V1)
WS_EXEC_PROTOCOLS = (V5, V4, V4_BASE64, V1, V1_BASE64)


def _flag(values: list[str]) -> bool:
    return bool(values) and values[-1].lower() in ("1", "true", "t", "yes")


@dataclass
class StreamOptions:
    """``PodExecOptions`` / ``PodAttachOptions`` as sent in the query."""

    stdin: bool = False
    stdout: bool = False
    stderr: bool = False
    tty: bool = False
    container: str = ""
    command: list[str] = field(default_factory=list)

    @classmethod
    def from_request(cls, req: UpgradeRequest) -> StreamOptions:
        return cls(
            stdin=_flag(req.query_values("stdin")),
            stdout=_flag(req.query_values("stdout")),
            stderr=_flag(req.query_values("stderr")),
            tty=_flag(req.query_values("tty")),
            container=(req.query_values("container") or [""])[-1],
            command=req.query_values("command"),
        )


def protocol_version(name: str) -> int:
    """5 for v5.channel.k8s.io ... 1 for (base64.)channel.k8s.io."""
    return int(name[1]) if name.startswith("v") and name[1].isdigit() else 1


def exit_status_json(code: int, argv: list[str]) -> bytes:
    """The Status kubelet writes on the error channel (v4+)."""
    if code == 0:
        return json.dumps({"metadata": {}, "status": "Success"}).encode()
    return json.dumps({
        "metadata": {},
        "status": "Failure",
        # Go's %v of a []string: [sh -c exit 7]
        "message": f"command terminated with non-zero exit code: error executing command "
                   f"[{' '.join(argv)}], exit code {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }).encode()


def exit_status_text(code: int) -> bytes:
    """v1-v3 carry only a text error (nothing on success)."""
    return b"" if code == 0 else f"command terminated with exit code {code}".encode()


def internal_error_json(message: str) -> bytes:
    """A Failure without an exit code: kubectl prints ``message`` as the error."""
    return json.dumps({"metadata": {}, "status": "Failure", "message": message,
                       "reason": "InternalError", "code": 500}).encode()
