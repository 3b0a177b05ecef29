"""Impersonation as k8s.io/apiserver/pkg/endpoints/filters/impersonation.go:
each requested attribute needs the ``impersonate`` verb on it, checked for
the caller, before the request continues as the impersonated user."""

from __future__ import annotations

from urllib.parse import unquote

from sandbox.apiserver import status as st
from sandbox.apiserver.authn import AUTHENTICATED, UNAUTHENTICATED, UserInfo
from sandbox.apiserver.rbac import Attributes, Authorizer

_USER = "impersonate-user"
_GROUP = "impersonate-group"
_UID = "impersonate-uid"
_EXTRA = "impersonate-extra-"
_SA_PREFIX = "system:serviceaccount:"
_AUTHN_GROUP = "authentication.k8s.io"


def has_impersonation(headers: list[tuple[str, str]]) -> bool:
    """Whether any Impersonate-* header is present."""
    return any(k.startswith("impersonate-") for k, _ in headers)


def impersonate(caller: UserInfo, headers: list[tuple[str, str]], authz: Authorizer) -> UserInfo:
    """The user to act as (``headers`` lower-cased names, repeats kept).

    Raises:
        ApiError: 403 in Kubernetes' format for the first attribute the caller
            may not impersonate; 500 for groups/uid/extra without a user, as upstream.
    """
    user_name = next((v for k, v in headers if k == _USER), None)
    groups = [v for k, v in headers if k == _GROUP]
    uid = next((v for k, v in headers if k == _UID), None)
    extra: dict[str, list[str]] = {}
    for k, v in headers:
        if k.startswith(_EXTRA):
            # Lower-cased already; PathUnescape undoes client-go's %XX encoding.
            extra.setdefault(unquote(k[len(_EXTRA):]), []).append(v)
    if user_name is None:
        if groups or uid is not None or extra:
            raise st.ApiError(
                "InternalError",
                "Internal error occurred: requested impersonation of groups, uid or user-extra "
                "without impersonating a user",
                code=500,
            )
        return caller

    checks: list[Attributes] = []
    if user_name.startswith(_SA_PREFIX) and user_name.count(":") == 3:
        _, _, ns, name = user_name.split(":")
        checks.append(Attributes("impersonate", "", "serviceaccounts", "", ns, name))
        if not groups:
            groups = ["system:serviceaccounts", f"system:serviceaccounts:{ns}"]
    else:
        checks.append(Attributes("impersonate", "", "users", "", "", user_name))
    checks += [Attributes("impersonate", "", "groups", "", "", g) for g in groups]
    for key, values in extra.items():
        checks += [Attributes("impersonate", _AUTHN_GROUP, "userextras", key, "", v) for v in values]
    if uid is not None:
        checks.append(Attributes("impersonate", _AUTHN_GROUP, "uids", "", "", uid))

    for attrs in checks:
        allowed, reason = authz.authorize(caller, attrs)
        if not allowed:
            raise st.forbidden(caller.name, attrs.verb, attrs.group, attrs.resource, attrs.subresource,
                               attrs.namespace, attrs.name, "", reason)

    if user_name != "system:anonymous":
        if not any(g in (AUTHENTICATED, UNAUTHENTICATED) for g in groups):
            groups.append(AUTHENTICATED)
    elif UNAUTHENTICATED not in groups:
        groups.append(UNAUTHENTICATED)
    return UserInfo(user_name, uid=uid or "", groups=tuple(groups), extra=extra)
