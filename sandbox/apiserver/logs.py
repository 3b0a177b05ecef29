"""``GET pods/<name>/log``: a chunked text/plain stream from the pod's runtime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from sandbox.apiserver import status as st
from sandbox.apiserver.http import Request, Response
from sandbox.apiserver.resources import lookup
from sandbox.apiserver.routing import RequestInfo

if TYPE_CHECKING:
    from sandbox.apiserver.app import App

PODS = lookup("", "v1", "pods")


def _int(req: Request, name: str) -> int | None:
    value = req.query.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise st.bad_request(f"invalid {name}: {value!r}") from exc


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


def serve_log(app: App, req: Request, info: RequestInfo) -> Response:
    """Validate the options as the kubelet does, then stream the runtime's log."""
    assert PODS is not None
    pod = app.store.get(PODS, info.namespace, info.name)
    names = [c.get("name", "") for c in pod.get("spec", {}).get("containers") or []]
    container = req.query.get("container") or ""
    if not container:
        if len(names) != 1:
            raise st.bad_request(f"a container name must be specified for pod {info.name}, choose one of: "
                                 f"[{' '.join(names)}]")
        container = names[0]
    if container not in names:
        raise st.bad_request(f"container {container} is not valid for pod {info.name}")
    if req.query.get("previous", "").lower() == "true":
        raise st.bad_request(f'previous terminated container "{container}" in pod "{info.name}" not found')
    follow = req.query.get("follow", "").lower() == "true"
    timestamps = req.query.get("timestamps", "").lower() == "true"
    tail, since, limit = _int(req, "tailLines"), _int(req, "sinceSeconds"), _int(req, "limitBytes")
    for name, v in (("tailLines", tail), ("sinceSeconds", since), ("limitBytes", limit)):
        if v is not None and (v < 0 or (v == 0 and name != "tailLines")):
            raise st.invalid("", "PodLogOptions", "", [("FieldValueInvalid", name,
                                                        f"Invalid value: {v}: must be greater than 0")])
    runtime = app.controllers.runtime_for(info.namespace, info.name)
    if runtime is None:
        return Response(200, b"", "text/plain")
    stream = runtime.log_stream(container, follow=follow, tail_lines=tail, since_seconds=since,
                                timestamps=timestamps, limit_bytes=limit)
    return Response(200, content_type="text/plain", stream=stream)
