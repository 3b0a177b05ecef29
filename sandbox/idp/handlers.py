"""HTTP handlers of the sandbox issuer (aiohttp).

Paths mirror Entra's v2 endpoints under ``/<tenant>/``; the member-groups
endpoint mirrors Graph's ``/v1.0/users/<oid>/getMemberObjects``. Errors use
OAuth2's JSON form (``error``, ``error_description``) with Entra-like codes.
Nothing here logs a password, secret or token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import logging
import secrets
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from aiohttp import web

from sandbox.idp.client_auth import ClientAuthenticator, ClientAuthError
from sandbox.idp.federation import FederationEndpoint
from sandbox.idp.pop import PopRequestError, requested_cnf
from sandbox.idp.tokens import (
    DEFAULT_LIFETIME,
    MAX_LIFETIME,
    RefreshTokens,
    ScopeError,
    TokenMinter,
    audience_of,
    new_device_code,
)
from sandbox.idp.users import ServicePrincipal, User

log = logging.getLogger("sandbox.idp")

DEVICE_CODE_LIFETIME = 900  # Entra: 15 minutes
DEVICE_POLL_INTERVAL = 1  # seconds; Entra says 5, tests want less
MAX_PENDING_DEVICE_CODES = 1000
AUTH_CODE_LIFETIME = 600  # Entra: 10 minutes
# Bounds the authorization codes a sign-in form can leave unredeemed.
MAX_PENDING_AUTH_CODES = 1000

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


class OAuthError(Exception):
    """An OAuth2 error response."""

    def __init__(self, error: str, description: str, status: int = 400, code: int | None = None) -> None:
        super().__init__(description)
        self.error, self.description, self.status, self.code = error, description, status, code

    def response(self) -> web.Response:
        body: dict[str, Any] = {"error": self.error, "error_description": self.description}
        if self.code is not None:
            body["error_codes"] = [self.code]
            body["error_description"] = f"AADSTS{self.code}: {self.description}"
        return web.json_response(body, status=self.status)


@dataclass
class DeviceCode:
    user_code: str
    client_id: str
    scope: str
    lifetime: int | None
    expires: float
    approved_oid: str | None = None
    denied: bool = False
    last_poll: float = 0.0


@dataclass(frozen=True)
class AuthCode:
    """An authorization code waiting to be redeemed (PKCE S256 required)."""

    client_id: str
    redirect_uri: str
    scope: str
    code_challenge: str
    user_oid: str
    lifetime: int | None
    expires: float


class IdpHandlers:
    """Request handlers bound to one issuer's state."""

    def __init__(self, minter: TokenMinter) -> None:
        self.minter = minter
        self.directory = minter.directory
        self.refresh_tokens = RefreshTokens()
        self.client_auth = ClientAuthenticator(self.directory)
        self.devices: dict[str, DeviceCode] = {}
        self.auth_codes: dict[str, AuthCode] = {}
        #: requests served, by kind (discovery, jwks, token, member_groups, ...)
        self.request_counts: Counter[str] = Counter()

    def routes(self) -> list[web.RouteDef]:
        t = "/{tenant}"
        return [
            web.get(t + "/v2.0/.well-known/openid-configuration", self.discovery),
            web.get(t + "/.well-known/openid-configuration", self.discovery_v1),
            web.get(t + "/discovery/v2.0/keys", self.jwks),
            web.post(t + "/oauth2/v2.0/token", self.token),
            web.post(t + "/oauth2/token", self.token_v1),
            web.post(t + "/oauth2/v2.0/devicecode", self.devicecode),
            web.get(t + "/oauth2/v2.0/deviceauth", self.deviceauth_form),
            web.post(t + "/oauth2/v2.0/deviceauth", self.deviceauth),
            web.get(t + "/oauth2/v2.0/authorize", self.authorize_form),
            web.post(t + "/oauth2/v2.0/authorize", self.authorize),
            web.post("/v1.0/users/{oid}/getMemberObjects", self.member_groups),
            FederationEndpoint(self.minter, self.client_auth).route(),
            web.get("/v1.0/users/{name}", self.user_lookup),
            web.get("/healthz", self.healthz),
        ]

    def _tenant(self, request: web.Request) -> None:
        if request.match_info["tenant"] != self.directory.tenant_id:
            raise web.HTTPNotFound(
                text='{"error":"invalid_tenant","error_description":"AADSTS90002: Tenant not found."}',
                content_type="application/json",
            )

    # -- discovery ---------------------------------------------------------

    async def discovery(self, request: web.Request) -> web.Response:
        """OIDC discovery document, Entra v2 fields."""
        self._tenant(request)
        self.request_counts["discovery"] += 1
        base = f"{self.minter.base_url}/{self.directory.tenant_id}"
        return web.json_response(
            {
                "issuer": self.minter.issuer,
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post", "client_secret_basic", "private_key_jwt"],
                "grant_types_supported": [
                    "authorization_code", "client_credentials", "password", "refresh_token",
                    DEVICE_CODE_GRANT,
                ],
                "code_challenge_methods_supported": ["S256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "claims_supported": [
                    "sub", "iss", "aud", "exp", "iat", "nbf", "name", "oid", "tid", "upn",
                    "preferred_username", "groups", "idtyp", "azp", "ver",
                ],
                "tenant_region_scope": "SANDBOX",
                "cloud_instance_name": "sandbox.cluster-connect.dev",
            }
        )

    async def discovery_v1(self, request: web.Request) -> web.Response:
        """The v1 discovery document: as Entra's, its ``issuer`` is
        sts.windows.net/<tid>/; the keys are the same."""
        self._tenant(request)
        self.request_counts["discovery"] += 1
        base = f"{self.minter.base_url}/{self.directory.tenant_id}"
        return web.json_response(
            {
                "issuer": self.minter.v1_issuer,
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "token_endpoint": f"{base}/oauth2/token",
                "id_token_signing_alg_values_supported": ["RS256"],
                "claims_supported": ["iss", "aud", "exp", "iat", "nbf", "oid", "tid", "upn",
                                     "unique_name", "groups", "appid", "ver"],
            }
        )

    async def jwks(self, request: web.Request) -> web.Response:
        """The published signing keys."""
        self._tenant(request)
        self.request_counts["jwks"] += 1
        return web.json_response(self.minter.keys.jwks())

    async def healthz(self, request: web.Request) -> web.Response:
        """Liveness."""
        return web.Response(text="ok")

    # -- token endpoint ----------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        """``POST /<tenant>/oauth2/v2.0/token`` for every supported grant."""
        self._tenant(request)
        self.request_counts["token"] += 1
        form = await request.post()
        params = {k: v for k, v in form.items() if isinstance(v, str)}
        grant = params.get("grant_type", "")
        try:
            if grant == "client_credentials":
                body = self._client_credentials(request, params)
            elif grant == "password":
                body = self._password(params)
            elif grant == "refresh_token":
                body = self._refresh(params)
            elif grant == DEVICE_CODE_GRANT:
                body = self._device_code(params)
            elif grant == "authorization_code":
                body = self._authorization_code(params)
            else:
                raise OAuthError("unsupported_grant_type", "The grant type is not supported.", code=70003)
        except OAuthError as exc:
            log.info("token refused grant=%s error=%s", grant or "-", exc.error)
            return exc.response()
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def token_v1(self, request: web.Request) -> web.Response:
        """``POST /<tenant>/oauth2/token``: Entra's v1 endpoint, ``resource=``
        instead of ``scope=``, v1-shaped tokens (client_credentials and password
        grants; no refresh token, so a refresh never changes the shape)."""
        self._tenant(request)
        self.request_counts["token"] += 1
        form = await request.post()
        params = {k: v for k, v in form.items() if isinstance(v, str)}
        grant = params.get("grant_type", "")
        try:
            resource = params.get("resource", "").rstrip("/")
            if not resource:
                raise OAuthError("invalid_request", "The request body must contain the 'resource' parameter.",
                                 code=50001)
            params["scope"] = f"{resource}/.default"
            if grant == "client_credentials":
                body = self._client_credentials(request, params, v1=True)
            elif grant == "password":
                body = self._password(params, v1=True)
            else:
                raise OAuthError("unsupported_grant_type", "The grant type is not supported.", code=70003)
        except OAuthError as exc:
            log.info("token refused grant=%s error=%s", grant or "-", exc.error)
            return exc.response()
        body.pop("scope", None)
        body["resource"] = resource
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    def _lifetime(self, params: dict[str, str], default: int | None) -> int:
        # `lifetime` is a sandbox extension so tests can ask for short-lived tokens.
        raw = params.get("lifetime")
        if raw is None:
            return default or DEFAULT_LIFETIME
        try:
            value = int(raw)
        except ValueError as exc:
            raise OAuthError("invalid_request", "lifetime must be an integer number of seconds.") from exc
        if not 1 <= value <= MAX_LIFETIME:
            raise OAuthError("invalid_request", f"lifetime must be within 1..{MAX_LIFETIME} seconds.")
        return value

    def _audience(self, scope: str) -> tuple[str, str]:
        try:
            return audience_of(scope)
        except ScopeError as exc:
            raise OAuthError("invalid_scope", str(exc), code=70011) from exc

    def _client_credentials(self, request: web.Request, params: dict[str, str], *, v1: bool = False
                            ) -> dict[str, Any]:
        app = self._authenticate_client(request, params)
        scope = params.get("scope", "")
        if not scope.endswith("/.default"):
            raise OAuthError("invalid_scope", "Client credentials need a /.default scope.", code=1002012)
        aud, _ = self._audience(scope)
        lifetime = self._lifetime(params, app.token_lifetime)
        claims = self.minter.app_claims(app, aud, lifetime)
        if v1:
            claims = self.minter.as_v1(claims)
        cnf = self._requested_cnf(params)  # a pipeline's token can be bound too (MSAL confidential clients)
        if cnf is not None:
            claims["cnf"] = cnf
        token = self.minter.sign(claims)
        log.info("token issued grant=client_credentials oid=%s aud=%s", app.oid, aud)
        body = _token_body(token, scope, lifetime)
        if cnf is not None:
            body["token_type"] = "pop"
        return body

    @staticmethod
    def _requested_cnf(params: dict[str, str]) -> dict[str, Any] | None:
        try:
            return requested_cnf(params)  # proof-of-possession (sandbox/idp/pop.py)
        except PopRequestError as exc:
            raise OAuthError("invalid_request", str(exc)) from exc

    def _authenticate_client(self, request: web.Request, params: dict[str, str]) -> ServicePrincipal:
        """The confidential client of a token request: secret, private_key_jwt
        or federated assertion (see client_auth.py)."""
        token_endpoint = f"{self.minter.base_url}/{self.directory.tenant_id}/oauth2/v2.0/token"
        try:
            who = self.client_auth.authenticate(params, request.headers.get("Authorization", ""),
                                                [token_endpoint, self.minter.issuer])
        except ClientAuthError as exc:
            raise OAuthError(exc.error, exc.description, exc.status, code=exc.code) from exc
        log.info("client authenticated client_id=%s method=%s", who.app.client_id, who.method)
        return who.app

    def _public_client(self, params: dict[str, str]) -> str:
        client_id = params.get("client_id") or self.minter.default_client_id
        if self.directory.find_app(client_id) is None:
            raise OAuthError("unauthorized_client", "Application not found in the directory.", code=700016)
        return client_id

    def _user_token(
        self, user: User, client_id: str, scope: str, lifetime: int, grant: str, *, refresh: bool = True,
        params: dict[str, str] | None = None, v1: bool = False,
    ) -> dict[str, Any]:
        aud, scp = self._audience(scope)
        claims = self.minter.user_claims(user, aud, lifetime, client_id=client_id, scp=scp)
        if v1:
            claims = self.minter.as_v1(claims)
        cnf = self._requested_cnf(params or {})
        if cnf is not None:
            claims["cnf"] = cnf
        token = self.minter.sign(claims)
        body = _token_body(token, scope, lifetime)
        if cnf is not None:
            body["token_type"] = "pop"
        if refresh:
            body["refresh_token"] = self.refresh_tokens.issue(user, client_id, scope, lifetime)
        log.info("token issued grant=%s oid=%s aud=%s", grant, user.oid, aud)
        return body

    def _password(self, params: dict[str, str], *, v1: bool = False) -> dict[str, Any]:
        client_id = self._public_client(params)
        user = self.directory.find_user(params.get("username", ""))
        if user is None or not _same(user.password, params.get("password", "")):
            raise OAuthError(
                "invalid_grant", "Error validating credentials due to invalid username or password.",
                code=50126,
            )
        scope = params.get("scope", "")
        lifetime = self._lifetime(params, user.token_lifetime)
        return self._user_token(user, client_id, scope, lifetime, "password", params=params,
                                refresh=not v1, v1=v1)

    def _refresh(self, params: dict[str, str]) -> dict[str, Any]:
        grant = self.refresh_tokens.redeem(params.get("refresh_token", ""))
        user = self.directory.find_user(grant.user_oid) if grant else None
        if grant is None or user is None:
            raise OAuthError("invalid_grant", "The refresh token is invalid or expired.", code=70000)
        if params.get("client_id") and params["client_id"] != grant.client_id:
            raise OAuthError("invalid_grant", "The refresh token was issued to another client.", code=70000)
        scope = params.get("scope") or grant.scope
        lifetime = self._lifetime(params, grant.lifetime or user.token_lifetime)
        return self._user_token(user, grant.client_id, scope, lifetime, "refresh_token", params=params)

    # -- device authorization grant (RFC 8628) -----------------------------

    async def devicecode(self, request: web.Request) -> web.Response:
        """Start a device-code sign-in."""
        self._tenant(request)
        self.request_counts["devicecode"] += 1
        form = await request.post()
        params = {k: v for k, v in form.items() if isinstance(v, str)}
        try:
            client_id = self._public_client(params)
            scope = params.get("scope", "")
            self._audience(scope)
            lifetime = self._lifetime(params, None) if "lifetime" in params else None
        except OAuthError as exc:
            return exc.response()
        now = time.time()
        self.devices = {k: d for k, d in self.devices.items() if d.expires > now}
        if len(self.devices) >= MAX_PENDING_DEVICE_CODES:
            return OAuthError("slow_down", "Too many pending device codes.", 429).response()
        device_code, user_code = new_device_code()
        self.devices[device_code] = DeviceCode(user_code, client_id, scope, lifetime, now + DEVICE_CODE_LIFETIME)
        uri = f"{self.minter.base_url}/{self.directory.tenant_id}/oauth2/v2.0/deviceauth"
        return web.json_response(
            {
                "device_code": device_code,
                "user_code": user_code,
                "verification_uri": uri,
                "expires_in": DEVICE_CODE_LIFETIME,
                "interval": DEVICE_POLL_INTERVAL,
                "message": f"To sign in, open {uri} and enter the code {user_code} to authenticate.",
            }
        )

    def approve_device(self, user_code: str, username: str) -> bool:
        """Approve a pending device code as ``username`` (no password: for tests)."""
        user = self.directory.find_user(username)
        for d in self.devices.values():
            if user is not None and d.user_code == user_code.upper() and d.expires > time.time():
                d.approved_oid = user.oid
                return True
        return False

    def deny_device(self, user_code: str) -> bool:
        """Refuse a pending device code (the user pressed Deny)."""
        for d in self.devices.values():
            if d.user_code == user_code.upper() and d.expires > time.time():
                d.denied = True
                return True
        return False

    async def deviceauth_form(self, request: web.Request) -> web.Response:
        """A minimal sign-in page for the device flow."""
        self._tenant(request)
        page = (
            "<!doctype html><title>Sandbox sign-in</title><form method=post>"
            "<p>Code <input name=user_code></p><p>User <input name=username></p>"
            "<p>Password <input name=password type=password></p><button>Sign in</button>"
            "<button name=action value=deny>Deny</button></form>"
        )
        return web.Response(text=page, content_type="text/html")

    async def deviceauth(self, request: web.Request) -> web.Response:
        """Approve a device code with username and password."""
        self._tenant(request)
        form = await request.post()
        user = self.directory.find_user(str(form.get("username", "")))
        if user is None or not _same(user.password, str(form.get("password", ""))):
            return web.Response(status=401, text="Invalid username or password.")
        if form.get("action") == "deny":
            if not self.deny_device(str(form.get("user_code", ""))):
                return web.Response(status=400, text="Unknown or expired code.")
            return web.Response(text="Sign-in denied. You may close this page.")
        if not self.approve_device(str(form.get("user_code", "")), user.username):
            return web.Response(status=400, text="Unknown or expired code.")
        return web.Response(text=f"Signed in as {html.escape(user.username)}. You may close this page.")

    def _device_code(self, params: dict[str, str]) -> dict[str, Any]:
        code = params.get("device_code", "")
        pending = self.devices.get(code)
        if pending is None or pending.expires <= time.time():
            self.devices.pop(code, None)
            raise OAuthError("expired_token", "The device code has expired.", code=70020)
        if pending.denied:
            del self.devices[code]
            raise OAuthError("access_denied", "The user denied the sign-in.", code=70019)
        if pending.approved_oid is None:
            # RFC 8628 3.5: polling faster than the interval earns slow_down.
            now = time.time()
            too_soon = now - pending.last_poll < DEVICE_POLL_INTERVAL
            pending.last_poll = now
            if too_soon:
                raise OAuthError("slow_down", "Polling faster than the interval.", code=70016)
            raise OAuthError("authorization_pending", "The user has not yet signed in.", code=70016)
        del self.devices[code]
        user = self.directory.find_user(pending.approved_oid)
        assert user is not None
        lifetime = pending.lifetime or user.token_lifetime or DEFAULT_LIFETIME
        return self._user_token(user, pending.client_id, pending.scope, lifetime, "device_code", params=params)

    # -- authorization code grant with PKCE (RFC 6749 4.1, RFC 7636) -------

    def _authorize_params(self, params: dict[str, str]) -> dict[str, str]:
        """The validated authorization request (raises OAuthError)."""
        self._public_client(params)
        if params.get("response_type") != "code":
            raise OAuthError("unsupported_response_type", "Only response_type=code is supported.")
        redirect = urlsplit(params.get("redirect_uri", ""))
        # Public clients redirect to a loopback listener (RFC 8252 7.3), any port.
        if redirect.scheme != "http" or redirect.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise OAuthError("invalid_request", "redirect_uri must be a loopback http URL.", code=50011)
        if params.get("code_challenge_method") != "S256" or len(params.get("code_challenge", "")) < 43:
            raise OAuthError("invalid_request", "PKCE with code_challenge_method=S256 is required.")
        self._audience(params.get("scope", ""))
        if "lifetime" in params:
            self._lifetime(params, None)
        return params

    async def authorize_form(self, request: web.Request) -> web.Response:
        """The sign-in page of the authorization endpoint; its fields carry the request."""
        self._tenant(request)
        self.request_counts["authorize"] += 1
        try:
            params = self._authorize_params(dict(request.query))
        except OAuthError as exc:
            return exc.response()
        hidden = "".join(
            f"<input type=hidden name={html.escape(k)} value=\"{html.escape(v)}\">" for k, v in params.items()
        )
        page = (
            "<!doctype html><title>Sandbox sign-in</title><form method=post>" + hidden
            + "<p>User <input name=username></p><p>Password <input name=password type=password></p>"
            "<button>Sign in</button></form>"
        )
        return web.Response(text=page, content_type="text/html")

    async def authorize(self, request: web.Request) -> web.Response:
        """Sign in and redirect to ``redirect_uri`` with ``code`` and ``state``."""
        self._tenant(request)
        form = await request.post()
        params = {k: v for k, v in form.items() if isinstance(v, str)}
        username, password = params.pop("username", ""), params.pop("password", "")
        try:
            self._authorize_params(params)
        except OAuthError as exc:
            return exc.response()
        user = self.directory.find_user(username)
        if user is None or not _same(user.password, password):
            return web.Response(status=401, text="Invalid username or password.")
        now = time.time()
        self.auth_codes = {k: c for k, c in self.auth_codes.items() if c.expires > now}
        if len(self.auth_codes) >= MAX_PENDING_AUTH_CODES:
            return web.Response(status=429, text="Too many pending sign-ins.")
        code = "ac." + secrets.token_urlsafe(32)
        lifetime = int(params["lifetime"]) if "lifetime" in params else None
        self.auth_codes[code] = AuthCode(
            params.get("client_id") or self.minter.default_client_id, params["redirect_uri"],
            params.get("scope", ""), params["code_challenge"], user.oid, lifetime, now + AUTH_CODE_LIFETIME,
        )
        query = {"code": code, **({"state": params["state"]} if "state" in params else {})}
        sep = "&" if "?" in params["redirect_uri"] else "?"
        raise web.HTTPFound(params["redirect_uri"] + sep + urlencode(query))

    def _authorization_code(self, params: dict[str, str]) -> dict[str, Any]:
        grant = self.auth_codes.pop(params.get("code", ""), None)  # single use
        if grant is None or grant.expires <= time.time():
            raise OAuthError("invalid_grant", "The authorization code is invalid or expired.", code=70008)
        if params.get("client_id", grant.client_id) != grant.client_id:
            raise OAuthError("invalid_grant", "The code was issued to another client.", code=70008)
        if params.get("redirect_uri") != grant.redirect_uri:
            raise OAuthError("invalid_grant", "redirect_uri does not match the authorization request.",
                             code=50148)
        digest = hashlib.sha256(params.get("code_verifier", "").encode()).digest()
        challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        if not hmac.compare_digest(challenge, grant.code_challenge):
            raise OAuthError("invalid_grant", "The code_verifier does not match the code_challenge.",
                             code=501481)
        user = self.directory.find_user(grant.user_oid)
        assert user is not None
        lifetime = grant.lifetime or user.token_lifetime or DEFAULT_LIFETIME
        return self._user_token(user, grant.client_id, grant.scope, lifetime, "authorization_code",
                                params=params)

    # -- member groups (Graph getMemberObjects) ----------------------------

    async def member_groups(self, request: web.Request) -> web.Response:
        """Groups of a user, for overage resolution. The caller needs a token
        from this issuer: an app token, or the user's own."""
        self.request_counts["member_groups"] += 1
        auth = request.headers.get("Authorization", "")
        claims = self.minter.verify_own(auth[7:]) if auth[:7].lower() == "bearer " else None
        if claims is None:
            return _graph_error(401, "InvalidAuthenticationToken", "Access token is missing or invalid.")
        oid = request.match_info["oid"]
        if claims.get("idtyp") != "app" and claims.get("oid") != oid:
            return _graph_error(403, "Authorization_RequestDenied", "Insufficient privileges.")
        groups = self.directory.groups_of(oid)
        if groups is None:
            return _graph_error(404, "Request_ResourceNotFound", "Resource does not exist.")
        log.info("member groups served oid=%s count=%d", oid, len(groups))
        return web.json_response({"value": list(groups)})


    # -- user lookup (Graph GET /users/{id | userPrincipalName}) -----------

    async def user_lookup(self, request: web.Request) -> web.Response:
        """A user's immutable id by user principal name (or id), as Microsoft
        Graph answers ``GET /v1.0/users/{upn}``: what ``arcctl role assign
        --assignee alice@...`` resolves a name with. Any token of this issuer
        may ask (Graph needs User.ReadBasic.All; the sandbox is one tenant)."""
        self.request_counts["user_lookup"] += 1
        auth = request.headers.get("Authorization", "")
        if (self.minter.verify_own(auth[7:]) if auth[:7].lower() == "bearer " else None) is None:
            return _graph_error(401, "InvalidAuthenticationToken", "Access token is missing or invalid.")
        name = request.match_info["name"].lower()
        user = next((u for u in self.directory.users if name in (u.username.lower(), u.oid)), None)
        if user is None:
            return _graph_error(404, "Request_ResourceNotFound", "Resource does not exist.")
        return web.json_response({"id": user.oid, "userPrincipalName": user.username,
                                  "displayName": user.name})


def _token_body(token: str, scope: str, lifetime: int) -> dict[str, Any]:
    return {
        "token_type": "Bearer",
        "scope": scope,
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": token,
    }


def _graph_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _same(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode(), given.encode())

