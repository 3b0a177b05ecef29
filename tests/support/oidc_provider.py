"""A real OpenID provider nobody here wrote: panva's ``oidc-provider`` (npm,
OpenID Certified) run by Node from ``tests/support/oidc_provider/``.

``OidcProvider.start`` runs ``npm ci`` once (``node_modules`` beside the
lock file, gitignored; reused when the lock file has not changed), then the
server over HTTPS on 127.0.0.1 port 0 with a serving certificate from our
``certs`` CA. It skips (with the reason) when node or npm are missing or
``npm ci`` fails, e.g. offline. :class:`Browser` plays the user on the
provider's own pages (user code, login, consent) over plain HTTP.
"""

from __future__ import annotations

import fcntl
import html
import http.cookiejar
import json
import re
import shutil
import signal
import ssl
import subprocess
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from certs import CertificateAuthority
from tests.support.processes import ChildProcess
from tests.support.waits import WAIT

PROVIDER_DIR = Path(__file__).resolve().parent / "oidc_provider"
AUDIENCE = "api://cluster-connect"
# Resource indicators server.mjs knows: ours (RS256), ours signed ES256, another API.
RESOURCE = AUDIENCE
RESOURCE_ES256 = "urn:cluster-connect:es256"
OTHER_RESOURCE = "api://other-app"
CLIENT_ID = "arcctl"
SCOPES = "openid offline_access cluster-connect"
NPM_CI_TIMEOUT = 300.0
# The stamp npm ci leaves: the lock file it installed (skip the next npm ci when equal).
_STAMP = PROVIDER_DIR / "node_modules" / ".installed-lock.json"


def _install() -> None:
    """``npm ci`` unless node_modules already matches the lock file; skip the
    test with the reason when it cannot."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (Debian: apt-get install nodejs npm; .ci/run does it)")
    # One npm ci at a time (two pytest runs of this tree would wreck each other's node_modules).
    with open(PROVIDER_DIR / ".npm-ci.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        _npm_ci()


def _npm_ci() -> None:
    lock = (PROVIDER_DIR / "package-lock.json").read_bytes()
    if _STAMP.exists() and _STAMP.read_bytes() == lock:
        return
    try:
        done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=PROVIDER_DIR,
                              capture_output=True, text=True, timeout=NPM_CI_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.skip(f"npm ci of oidc-provider did not finish in {NPM_CI_TIMEOUT:.0f} s (offline?)")
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"npm ci of oidc-provider failed (offline?): {last}")
    _STAMP.write_bytes(lock)


@dataclass
class OidcProvider:
    """The running provider: its issuer URL, the CA file that verifies it."""

    child: ChildProcess
    issuer: str
    ca_file: Path

    @classmethod
    def start(cls, tmp: Path, *, access_token_ttl: int = 300) -> OidcProvider:
        _install()
        tmp.mkdir(parents=True, exist_ok=True)
        ca = CertificateAuthority.create("oidc-provider test CA")
        serving = ca.issue_server()
        (tmp / "ca.pem").write_bytes(ca.certificate_pem)
        (tmp / "cert.pem").write_bytes(serving.chain_pem)
        (tmp / "key.pem").write_bytes(serving.private_key_pem)
        (tmp / "config.json").write_text(json.dumps({
            "cert": str(tmp / "cert.pem"), "key": str(tmp / "key.pem"), "access_token_ttl": access_token_ttl}))
        child = ChildProcess.start(["node", str(PROVIDER_DIR / "server.mjs"), str(tmp / "config.json")],
                                   ready='"issuer"', name="oidc-provider", cwd=PROVIDER_DIR)
        issuer = str(json.loads(child.ready_line)["issuer"])
        return cls(child, issuer, tmp / "ca.pem")

    @property
    def ca_pem(self) -> bytes:
        return self.ca_file.read_bytes()

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def rotate(self) -> str:
        """A new RS256 signing key (SIGHUP); returns its kid once the provider uses it."""
        self.child.send_signal(signal.SIGHUP)
        line = self.child.out.wait_for('"rotated"', WAIT)
        return str(json.loads(line)["rotated"])

    def post(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """A form POST to one of its endpoints; (status, JSON body)."""
        req = urllib.request.Request(self.issuer + path, data=urllib.parse.urlencode(form).encode())
        try:
            with urllib.request.urlopen(req, context=self.ssl_context(), timeout=WAIT) as resp:
                return resp.status, dict(json.loads(resp.read()))
        except urllib.error.HTTPError as err:
            return err.code, dict(json.loads(err.read() or b"{}"))

    def device_tokens(self, user: str, resource: str = RESOURCE) -> dict[str, Any]:
        """The token response of a whole device flow for ``user``, the test
        playing both the device (this process) and the user (:class:`Browser`)."""
        status, start = self.post("/device/auth", {"client_id": CLIENT_ID, "scope": SCOPES,
                                                    "resource": resource})
        assert status == 200, start
        Browser(self).approve(str(start["verification_uri"]), str(start["user_code"]), user)
        status, body = self.post("/token", {"grant_type": "urn:ietf:params:oauth:grant-type:device_code",
                                            "device_code": str(start["device_code"]), "client_id": CLIENT_ID})
        assert status == 200, body
        return body

    def stop(self) -> None:
        self.child.stop()


_FORM = re.compile(r"<form\b([^>]*)>(.*?)</form>", re.S | re.I)
_ATTR = re.compile(r'([\w-]+)="([^"]*)"')
_INPUT = re.compile(r"<input\b([^>]*)>", re.I)


class Browser:
    """The user at a browser: a cookie jar, and the provider's pages submitted
    in turn (user code, confirm, login, consent) until a page has no form."""

    def __init__(self, provider: OidcProvider) -> None:
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=provider.ssl_context()),
            urllib.request.HTTPCookieProcessor(self.jar))

    def _open(self, url: str, form: dict[str, str] | None = None) -> tuple[str, str]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        with self.opener.open(url, data=data, timeout=WAIT) as resp:
            return resp.geturl(), resp.read().decode()

    def approve(self, verification_uri: str, user_code: str, user: str) -> str:
        """Enter ``user_code``, sign in as ``user`` (any password), consent;
        returns the last page (the provider's success page)."""
        fill = {"user_code": user_code, "login": user, "password": "any"}
        url, page = self._open(verification_uri)
        for _ in range(8):
            forms = [(dict(_ATTR.findall(attrs)), body) for attrs, body in _FORM.findall(page)]
            forms = [(a, b) for a, b in forms if a.get("method", "").lower() == "post"]
            if not forms:
                assert re.search(r"success", page, re.I), page[-2000:]
                return page
            attrs, body = forms[0]
            fields: dict[str, str] = {}
            for raw in _INPUT.findall(body):
                field = {k: html.unescape(v) for k, v in _ATTR.findall(raw)}
                if "name" in field:
                    fields[field["name"]] = fill.get(field["name"], field.get("value", ""))
            url, page = self._open(urllib.parse.urljoin(url, html.unescape(attrs.get("action", "")) or url),
                                   fields)
        raise AssertionError(f"the provider's pages never ended: {page[-2000:]}")


__all__ = ["AUDIENCE", "CLIENT_ID", "OTHER_RESOURCE", "RESOURCE", "RESOURCE_ES256", "SCOPES", "Browser",
           "OidcProvider"]
