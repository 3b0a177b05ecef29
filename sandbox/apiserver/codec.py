"""Request body decoding (JSON, YAML, protobuf) and JSON responses."""

from __future__ import annotations

import json
from typing import Any

import yaml

from sandbox.apiserver import protobuf
from sandbox.apiserver.http import Request, Response
from sandbox.apiserver.status import ApiError

PROTOBUF = "application/vnd.kubernetes.protobuf"


def media_type(req: Request) -> str:
    """The Content-Type without parameters, lower-cased."""
    return (req.header("content-type") or "application/json").split(";")[0].strip().lower()


def decode(req: Request) -> Any:
    """The request body as JSON-shaped data.

    Raises:
        ApiError: 400 for an unparsable body, 415 for an unsupported type.
    """
    mt = media_type(req)
    if mt == PROTOBUF:
        return protobuf.decode_body(req.body)
    if mt == "application/apply-patch+yaml" or mt == "application/apply-patch+cbor":
        raise ApiError("UnsupportedMediaType",
                       f"the body of the request was in an unknown format - accepted media types include: "
                       f"application/json, application/yaml, {PROTOBUF} (server-side apply is not supported "
                       "by the sandbox; use client-side apply)", code=415)
    if mt == "application/cbor":
        raise ApiError("UnsupportedMediaType", "the body of the request was in an unknown format - accepted "
                       f"media types include: application/json, application/yaml, {PROTOBUF}", code=415)
    try:
        if mt.endswith("yaml"):
            return yaml.safe_load(req.body.decode() or "{}")
        return json.loads(req.body or b"{}")
    except (ValueError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ApiError("BadRequest", "the request body could not be decoded as " + mt) from exc


def json_response(status: int, obj: Any, *, content_type: str = "application/json",
                  headers: list[tuple[str, str]] | None = None) -> Response:
    """A JSON body with a trailing newline, as the Go encoder writes it."""
    body = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
    return Response(status, body, content_type, headers or [])
