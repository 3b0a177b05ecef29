"""``arcctl login`` / ``logout`` / ``account show`` / ``get-token`` against the
real sandbox issuer over TLS, each command a real ``arcctl`` process; the
test plays the user over HTTP (the device sign-in form, the browser's
redirects). Also the sandbox's own authorization-code + PKCE and device-flow
errors, and that the lean ``get-token`` path imports no heavy module."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import jwt
import pytest
import yaml

from demo import load_demo_identity
from sandbox.idp import SandboxIdp

ROOT = Path(__file__).resolve().parents[2]
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
HEAVY = ("pydantic", "aiohttp", "yaml", "kubernetes", "jwt", "cryptography")


def _config(tmp_path: Path, idp: SandboxIdp, **auth: object) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "relay": {"url": "https://127.0.0.1:1"},
        "auth": {"issuer": idp.issuer, "ca_file": str(idp.ca_file),
                 "client_id": load_demo_identity().client_id, **auth},
    }))
    return path


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(tmp_path / "cache"), **extra}


async def _arcctl(tmp_path: Path, *args: str, **env: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client.arcctl_entry", *args, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(tmp_path, **env), cwd=ROOT)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _http(idp: SandboxIdp) -> aiohttp.ClientSession:
    import ssl

    ctx = ssl.create_default_context(cafile=str(idp.ca_file))
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx))


async def _login_device(tmp_path: Path, idp: SandboxIdp, config: Path, *, deny: bool = False) -> tuple[int, str]:
    """Run ``arcctl login`` and sign in (or deny) on the device page as the demo user."""
    ident = load_demo_identity()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client.arcctl_entry", "login", "--config", str(config),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=_env(tmp_path), cwd=ROOT)
    assert proc.stderr is not None
    line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
    match = re.search(r"open (\S+) and enter the code (\S+)", line)
    assert match, line
    form = {"user_code": match.group(2), "username": ident.user, "password": ident.password}
    if deny:
        form["action"] = "deny"
    async with _http(idp) as http, http.post(match.group(1), data=form) as resp:
        assert resp.status == 200
    rest = await asyncio.wait_for(proc.stderr.read(), 60)
    await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, line + rest.decode()


def _cache_file(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "cluster-connect" / "login-tokens.json"


async def test_login_device_code_then_get_token_and_account_show(idp: SandboxIdp, tmp_path: Path) -> None:
    """Device-code login caches the account (file 0600); get-token prints an
    ExecCredential with its token and expiry; account show names the user and
    never prints the token; logout removes the account."""
    config = _config(tmp_path, idp)
    code, err = await _login_device(tmp_path, idp, config)
    assert code == 0, err
    assert "signed in to" in err and load_demo_identity().user in err
    cache = _cache_file(tmp_path)
    assert cache.stat().st_mode & 0o777 == 0o600

    code, out, err = await _arcctl(tmp_path, "get-token", "--config", str(config))
    assert code == 0, err
    cred = json.loads(out)
    token = cred["status"]["token"]
    assert cred["status"]["expirationTimestamp"].endswith("Z")
    assert jwt.decode(token, options={"verify_signature": False})["oid"] == load_demo_identity().user_oid

    code, out, err = await _arcctl(tmp_path, "account", "show", "--config", str(config))
    assert code == 0, err
    shown = json.loads(out)
    assert shown["user"] == load_demo_identity().user and shown["issuer"] == idp.issuer
    assert shown["account"] == load_demo_identity().user_oid and shown["tenant"] == idp.tenant_id
    assert token not in out + err and "refresh_token" not in out and "rt." not in out

    code, _, err = await _arcctl(tmp_path, "logout", "--config", str(config))
    assert code == 0 and "signed out" in err
    assert json.loads(cache.read_text())["accounts"] == {}
    code, out, err = await _arcctl(tmp_path, "get-token", "--config", str(config))
    assert code == 4 and out == "" and "run `arcctl login`" in err


async def test_get_token_without_login_and_no_terminal_is_one_line(idp: SandboxIdp, tmp_path: Path) -> None:
    """No cached login and stdin not a terminal: one line naming the issuer and `arcctl login`, exit 4."""
    code, out, err = await _arcctl(tmp_path, "get-token", "--config", str(_config(tmp_path, idp)))
    assert code == 4 and out == ""
    assert err.strip().splitlines() == [f"arcctl get-token: not logged in to {idp.issuer}: run `arcctl login`"]


async def test_login_device_code_denied_is_one_line(idp: SandboxIdp, tmp_path: Path) -> None:
    """The user presses Deny: login fails with one line, exit 4, nothing cached."""
    code, err = await _login_device(tmp_path, idp, _config(tmp_path, idp), deny=True)
    assert code == 4 and "denied" in err.splitlines()[-1] and "Traceback" not in err
    assert not _cache_file(tmp_path).exists()


async def test_get_token_refreshes_an_expired_token_silently(idp: SandboxIdp, tmp_path: Path) -> None:
    """An expired cached token (its expiry moved to the past in the cache, no
    sleeping) is renewed by get-token with the refresh token, without a prompt."""
    config = _config(tmp_path, idp, lifetime="600")
    code, err = await _login_device(tmp_path, idp, config)
    assert code == 0, err
    cache = _cache_file(tmp_path)
    first = json.loads(cache.read_text())
    (old,) = first["accounts"].values()
    old["expires_at"] = old["issued_at"] - 1
    cache.write_text(json.dumps(first))
    code, out, err = await _arcctl(tmp_path, "get-token", "--config", str(config))
    assert code == 0, err
    new = json.loads(out)["status"]["token"]
    assert new != old["access_token"]
    claims = jwt.decode(new, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 600  # the lifetime extension went with the refresh
    assert jwt.decode(new, options={"verify_signature": False})["oid"] == load_demo_identity().user_oid


async def test_login_browser_flow_follows_redirect_to_loopback(idp: SandboxIdp, tmp_path: Path) -> None:
    """Browser login: BROWSER is `true`, the test GETs the printed URL, signs in
    on the form, and follows the redirect (code + state) to arcctl's listener."""
    ident = load_demo_identity()
    config = _config(tmp_path, idp, login="browser")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client.arcctl_entry", "login", "--config", str(config),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=_env(tmp_path, BROWSER="true"), cwd=ROOT)
    assert proc.stderr is not None
    line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
    url = line.split("open ", 1)[1].strip()
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert query["code_challenge_method"] == "S256" and query["state"]
    async with _http(idp) as http:
        async with http.get(url) as resp:
            assert resp.status == 200 and "<form" in await resp.text()
        form = {**query, "username": ident.user, "password": ident.password}
        async with http.post(url.split("?")[0], data=form, allow_redirects=False) as resp:
            assert resp.status == 302
            location = resp.headers["Location"]
        assert location.startswith(query["redirect_uri"]) and "state=" in location
        async with aiohttp.ClientSession() as plain, plain.get(location) as resp:
            assert resp.status == 200
    rest = await asyncio.wait_for(proc.stderr.read(), 60)
    assert await proc.wait() == 0, rest.decode()
    (account,) = json.loads(_cache_file(tmp_path).read_text())["accounts"].values()
    assert account["account"] == ident.user_oid


async def _authorize(http: aiohttp.ClientSession, idp: SandboxIdp, challenge: str) -> tuple[str, str]:
    ident = load_demo_identity()
    redirect = "http://127.0.0.1:9/"
    form = {"client_id": ident.client_id, "response_type": "code", "redirect_uri": redirect,
            "scope": "api://cluster-connect/.default openid", "state": "s1",
            "code_challenge": challenge, "code_challenge_method": "S256",
            "username": ident.user, "password": ident.password}
    url = f"{idp.url}/{idp.tenant_id}/oauth2/v2.0/authorize"
    async with http.post(url, data=form, allow_redirects=False) as resp:
        assert resp.status == 302, await resp.text()
        q = parse_qs(urlsplit(resp.headers["Location"]).query)
    assert q["state"] == ["s1"]
    return q["code"][0], redirect


async def test_sandbox_pkce_wrong_verifier_refused_right_one_accepted(idp: SandboxIdp) -> None:
    """The authorization_code grant checks the PKCE S256 verifier; a code is single use."""
    verifier = "v" * 50
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    async with _http(idp) as http:
        for given, want in (("w" * 50, 400), (verifier, 200)):
            code, redirect = await _authorize(http, idp, challenge)
            form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect,
                    "client_id": load_demo_identity().client_id, "code_verifier": given}
            async with http.post(idp.token_endpoint, data=form) as resp:
                body = await resp.json()
                assert resp.status == want, body
            if want == 400:
                assert body["error"] == "invalid_grant"
            async with http.post(idp.token_endpoint, data={**form, "code_verifier": verifier}) as resp:
                assert resp.status == 400  # used (or refused) once: gone
    async with _http(idp) as http:
        async with http.get(f"{idp.url}/{idp.tenant_id}/v2.0/.well-known/openid-configuration") as resp:
            doc = await resp.json()
    assert doc["authorization_endpoint"].endswith("/authorize")
    assert "authorization_code" in doc["grant_types_supported"]


async def test_sandbox_device_poll_too_fast_gets_slow_down(idp: SandboxIdp) -> None:
    """Two polls within the interval: the second is answered slow_down (RFC 8628 3.5)."""
    async with _http(idp) as http:
        async with http.post(idp.device_authorization_endpoint, data={
                "client_id": load_demo_identity().client_id,
                "scope": "api://cluster-connect/.default"}) as resp:
            start = await resp.json()
        errors = []
        for _ in range(2):
            async with http.post(idp.token_endpoint, data={
                    "grant_type": DEVICE_GRANT, "device_code": start["device_code"]}) as resp:
                errors.append((await resp.json())["error"])
    assert errors == ["authorization_pending", "slow_down"]


async def test_discovery_refuses_a_different_issuer(idp: SandboxIdp, tmp_path: Path) -> None:
    """auth.issuer that is not the document's issuer: login fails with one line naming both."""
    wrong = idp.issuer.replace("/v2.0", "/v2.0/")
    config = _config(tmp_path, idp)
    doc = yaml.safe_load(config.read_text())
    doc["auth"]["issuer"] = wrong
    config.write_text(yaml.safe_dump(doc))
    code, _, err = await _arcctl(tmp_path, "login", "--config", str(config))
    assert code == 4 and len(err.strip().splitlines()) == 1
    assert "set auth.issuer to the issuer's exact URL" in err


async def test_get_token_lean_path_imports_no_heavy_module(idp: SandboxIdp, tmp_path: Path) -> None:
    """Once get-token has indexed a config, the next call is answered by
    client.arcctl_entry with none of pydantic, aiohttp, yaml, jwt, kubernetes loaded;
    editing the config sends the next call through the full path again."""
    config = _config(tmp_path, idp)
    code, err = await _login_device(tmp_path, idp, config)
    assert code == 0, err
    code, first, err = await _arcctl(tmp_path, "get-token", "--config", str(config))
    assert code == 0, err
    probe = ("import sys, runpy; sys.argv = ['arcctl', 'get-token', '--config', sys.argv[1]]\n"
             "from client.arcctl_entry import main\n"
             "rc = main(sys.argv[1:])\n"
             f"print(sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr); sys.exit(rc)")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", probe, str(config), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=_env(tmp_path), cwd=ROOT)
    out, err_b = await proc.communicate()
    assert proc.returncode == 0 and json.loads(out) == json.loads(first)
    assert err_b.decode().strip() == "[]"
    # An edited config (new mtime) is not trusted by the lean path.
    os.utime(config, ns=(config.stat().st_atime_ns, config.stat().st_mtime_ns + 10**9))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", probe, str(config), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=_env(tmp_path), cwd=ROOT)
    out, err_b = await proc.communicate()
    assert proc.returncode == 0 and "pydantic" in err_b.decode()


@pytest.mark.parametrize("argv", [["get-token", "--debug"], ["list"]])
def test_lean_entry_leaves_other_commands_to_the_full_path(argv: list[str]) -> None:
    """Only a plain `get-token [--config F]` may take the lean path."""
    from client.arcctl_entry import _config_flag

    assert _config_flag(argv)[0] is False


async def test_browser_login_without_an_answer_gives_up_with_one_line(
        idp: SandboxIdp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nobody completes the browser sign-in: after BROWSER_TIMEOUT (1 s here)
    login gives up with an AuthError naming the fix, and the listener is closed."""
    from client import login as login_module
    from client.config import AuthConfig
    from client.errors import AuthError
    from client.token_cache import TokenCache

    monkeypatch.setattr(login_module, "BROWSER_TIMEOUT", 1.0)
    monkeypatch.setenv("BROWSER", "true")
    auth = AuthConfig(issuer=idp.issuer, ca_file=str(idp.ca_file), client_id=load_demo_identity().client_id)
    with pytest.raises(AuthError, match="no sign-in within 1 s: run `arcctl login` again"):
        await login_module.login(auth, TokenCache(tmp_path / "cache"), method="browser")
    assert not (tmp_path / "cache" / "login-tokens.json").exists()


async def test_login_with_relay_scope_keeps_the_cluster_token_for_kubectl(
        idp: SandboxIdp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With auth.relay_scope, get-token still prints the cluster's token while the
    relay's (its own audience) comes from the login account's refresh token, cached apart."""
    from client.auth import TokenSource
    from client.config import load_config

    config = _config(tmp_path, idp, scope="api://cluster-connect/.default",
                     relay_scope="api://cluster-connect-relay/.default")
    code, err = await _login_device(tmp_path, idp, config)
    assert code == 0, err
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    relay = await TokenSource(load_config(config).auth.for_relay()).get()
    assert jwt.decode(relay, options={"verify_signature": False})["aud"] == "api://cluster-connect-relay"
    code, out, err = await _arcctl(tmp_path, "get-token", "--config", str(config))
    assert code == 0, err
    token = json.loads(out)["status"]["token"]
    assert jwt.decode(token, options={"verify_signature": False})["aud"] == "api://cluster-connect"
