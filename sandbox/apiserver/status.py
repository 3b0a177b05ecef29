"""Kubernetes ``Status`` objects and the error type that carries one."""

from __future__ import annotations

from typing import Any

# reason -> HTTP code, as in k8s.io/apimachinery/pkg/api/errors.
REASON_CODES = {
    "BadRequest": 400,
    "Unauthorized": 401,
    "Forbidden": 403,
    "NotFound": 404,
    "MethodNotAllowed": 405,
    "NotAcceptable": 406,
    "AlreadyExists": 409,
    "Conflict": 409,
    "Gone": 410,
    "Expired": 410,
    "RequestEntityTooLarge": 413,
    "UnsupportedMediaType": 415,
    "Invalid": 422,
    "TooManyRequests": 429,
    "InternalError": 500,
}


class ApiError(Exception):
    """A request failure that becomes a ``Status`` body with ``code``."""

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        code: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.code = code if code is not None else REASON_CODES.get(reason, 500)
        self.details = details

    def status(self) -> dict[str, Any]:
        """The ``Status`` object for this error."""
        return failure(self.code, self.reason, self.message, self.details)


def failure(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``Status`` with ``status: Failure``; ``reason`` is omitted when empty."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
    }
    if reason:
        body["reason"] = reason
    if details:
        body["details"] = details
    body["code"] = code
    return body


def success(details: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``Status`` with ``status: Success`` (returned by some deletes)."""
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
    if details:
        body["details"] = details
    return body


def _qualified(group: str, resource: str) -> str:
    return f"{resource}.{group}" if group else resource


def not_found(group: str, resource: str, name: str) -> ApiError:
    """``<resource> "<name>" not found``."""
    return ApiError(
        "NotFound",
        f'{_qualified(group, resource)} "{name}" not found',
        details={"name": name, "group": group, "kind": resource} if group else {"name": name, "kind": resource},
    )


def already_exists(group: str, resource: str, name: str) -> ApiError:
    """``<resource> "<name>" already exists``."""
    details = {"name": name, "kind": resource}
    if group:
        details["group"] = group
    return ApiError("AlreadyExists", f'{_qualified(group, resource)} "{name}" already exists', details=details)


def conflict(group: str, resource: str, name: str, why: str) -> ApiError:
    """The optimistic-concurrency failure of an update with a stale resourceVersion."""
    details = {"name": name, "kind": resource}
    if group:
        details["group"] = group
    return ApiError(
        "Conflict",
        f'Operation cannot be fulfilled on {_qualified(group, resource)} "{name}": {why}',
        details=details,
    )


def invalid(group: str, kind: str, name: str, causes: list[tuple[str, str, str]]) -> ApiError:
    """A 422 with field causes given as ``(reason, field, message)``."""
    msgs = "; ".join(f"{f}: {m}" for _, f, m in causes)
    details: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "causes": [{"reason": r, "message": m, "field": f} for r, f, m in causes],
    }
    if group:
        details["group"] = group
    qualified = f"{kind}.{group}" if group else kind
    return ApiError("Invalid", f'{qualified} "{name}" is invalid: {msgs}', details=details)


def bad_request(message: str) -> ApiError:
    """A 400 with no reason-specific details."""
    return ApiError("BadRequest", message)


def forbidden(user: str, verb: str, group: str, resource: str, subresource: str, namespace: str,
              name: str, path: str, reason: str = "") -> ApiError:
    """Kubernetes' authorization failure (responsewriters.Forbidden + NewForbidden).

    The prefix names the group-qualified resource without subresource; the
    sentence after it names ``resource/subresource``.
    """
    if resource:
        res = f"{resource}/{subresource}" if subresource else resource
        where = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
        msg = f'User "{user}" cannot {verb} resource "{res}" in API group "{group}" {where}'
    else:
        msg = f'User "{user}" cannot {verb} path "{path}"'
    if reason:
        msg = f"{msg}: {reason}"
    details: dict[str, Any] = {}
    if resource:
        qualified = _qualified(group, resource)
        message = f'{qualified} "{name}" is forbidden: {msg}' if name else f"{qualified} is forbidden: {msg}"
        if name:
            details["name"] = name
        if group:
            details["group"] = group
        details["kind"] = resource
    else:
        message = f"forbidden: {msg}"
    return ApiError("Forbidden", message, details=details or None)
