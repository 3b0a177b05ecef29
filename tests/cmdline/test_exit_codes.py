"""One exit-code table for every command: each user error has a distinct,
documented code, and ``arc-relay``, ``arc-agent``, ``arc-proxy`` and
``arcctl`` turn every kind of failure into the same line and code."""

from __future__ import annotations

import importlib
import io
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import agent.cli
import client.arcctl
import client.proxy_cli
import relay.cli
from cmdline import (
    INTERNAL_ERROR,
    INTERRUPTED,
    TERMINATED,
    USER_ERRORS,
    CliError,
    ConfigError,
    Terminated,
    exit_code_table,
    exit_codes_epilog,
    run_cli,
)

ROOT = Path(__file__).resolve().parents[2]
# Every package of the project (a new one is checked without editing this test).
PACKAGES = sorted(p.parent.name for p in ROOT.glob("*/__init__.py")
                  if p.parent.name not in ("tests", "bench", "deploy"))


def _all_subclasses(cls: type[CliError]) -> set[type[CliError]]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _all_subclasses(sub)
    return found


def _import_every_module() -> None:
    for name in PACKAGES:
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, f"{name}."):
            if not info.name.endswith("__main__"):
                importlib.import_module(info.name)


def test_every_cli_error_with_its_own_code_is_in_the_one_table() -> None:
    """Every CliError subclass in the code base that sets exit_code is listed
    in cmdline.errors.USER_ERRORS; subclasses without one inherit a listed code."""
    _import_every_module()
    for cls in _all_subclasses(CliError):
        if "exit_code" in vars(cls):
            assert cls in USER_ERRORS, f"{cls.__module__}.{cls.__qualname__} sets its own exit_code"
        assert cls.exit_code in {c.exit_code for c in USER_ERRORS}, cls


def test_exit_codes_are_distinct_and_documented() -> None:
    """No two rows share a code; every row is in the --help table and in docs/cli.md."""
    table = exit_code_table()
    codes = [code for code, _ in table]
    assert len(codes) == len(set(codes)) and codes == sorted(codes)
    assert {c.exit_code for c in USER_ERRORS} <= set(codes)
    assert len(USER_ERRORS) == len({c.exit_code for c in USER_ERRORS})
    epilog = exit_codes_epilog()
    docs = (ROOT / "docs" / "cli.md").read_text()
    for code, meaning in table:
        assert f"  {code:<4} {meaning}" in epilog
        assert f"| {code} | {meaning} |" in docs, f"docs/cli.md lacks the row of exit code {code}"
    for cls in USER_ERRORS:
        assert f"`{cls.__name__}`" in docs, f"docs/cli.md does not name {cls.__name__}"


def _fail(exc: BaseException) -> Callable[[], int]:
    def body() -> int:
        raise exc
    return body


@pytest.mark.parametrize("error", USER_ERRORS, ids=lambda c: c.__name__)
def test_run_cli_prints_a_user_error_as_one_line_with_its_code(error: type[CliError]) -> None:
    """A CliError: "PROG: message" alone on stderr, its own exit code."""
    out = io.StringIO()
    assert run_cli("arcctl list", _fail(error("cause: fix")), debug=False, stderr=out) == error.exit_code
    assert out.getvalue() == "arcctl list: cause: fix\n"


def test_run_cli_reports_a_bug_in_one_line_and_the_traceback_only_with_debug() -> None:
    """An unexpected exception: one line naming its type, 70; --debug adds the traceback."""
    out = io.StringIO()
    code = run_cli("arc-relay", _fail(RuntimeError("boom\nsecond line")), debug=False, stderr=out)
    assert code == INTERNAL_ERROR
    assert out.getvalue() == "arc-relay: internal error: RuntimeError: boom second line (rerun with --debug)\n"
    out = io.StringIO()
    assert run_cli("arc-relay", _fail(RuntimeError("boom")), debug=True, stderr=out) == INTERNAL_ERROR
    text = out.getvalue()
    assert text.startswith("Traceback (most recent call last):")
    assert text.endswith("arc-relay: internal error: RuntimeError: boom\n")


def test_run_cli_is_silent_on_interrupt_and_terminate() -> None:
    """Ctrl-C is 130, SIGTERM is 143, and neither prints anything."""
    out = io.StringIO()
    assert run_cli("arc-proxy", _fail(KeyboardInterrupt()), debug=False, stderr=out) == INTERRUPTED
    assert run_cli("arc-proxy", _fail(Terminated()), debug=False, stderr=out) == TERMINATED
    assert out.getvalue() == ""


def test_run_cli_passes_the_body_exit_code_through() -> None:
    """What the command returns is what the process exits with."""
    assert run_cli("arcctl show", lambda: 0, debug=False) == 0
    assert run_cli("arcctl delete", lambda: 1, debug=False) == 1


# Each command with the argv that reaches its config loader, and that loader's
# name in the command's module (replaced to fail the way the test asks).
COMMANDS: list[tuple[str, Any, list[str], str]] = [
    ("arc-relay", relay.cli, [], "load_relay_config"),
    ("arc-agent", agent.cli, ["--config", "agent.yaml"], "load_agent_config"),
    ("arc-proxy", client.proxy_cli, ["-n", "demo", "--port", "0"], "load_config"),
    ("arcctl list", client.arcctl, ["list"], "load_config"),
]
FAILURES: list[BaseException] = [
    *(cls(f"{cls.__name__} happened: fix it") for cls in USER_ERRORS),
    RuntimeError("boom"),
    KeyboardInterrupt(),
]


def _expected(prog: str, exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, CliError):
        return exc.exit_code, f"{prog}: {exc}\n"
    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPTED, ""
    return INTERNAL_ERROR, f"{prog}: internal error: {type(exc).__name__}: {exc} (rerun with --debug)\n"


@pytest.mark.parametrize(("prog", "module", "argv", "loader"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_every_command_maps_every_failure_the_same_way(
    prog: str, module: Any, argv: list[str], loader: str,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """The same failure in any command gives the same code and the same one
    line (named after the command), and no traceback."""
    # arc-proxy tunes the allocator before it loads its config: not in this process.
    monkeypatch.setattr(module, "tune_allocator", lambda: True, raising=False)
    for exc in FAILURES:
        def fail(*args: Any, exc: BaseException = exc, **kwargs: Any) -> Any:
            raise exc
        monkeypatch.setattr(module, loader, fail)
        code = module.main(argv)
        err = capsys.readouterr().err
        assert (code, err) == _expected(prog, exc), exc


def test_a_local_config_error_type_is_reported_as_a_config_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """relay.config and agent.config raise their own types: still exit 2, one line."""
    from agent.config import AgentConfigError
    from relay.config import ConfigError as RelayConfigError

    for module, argv, loader, exc in [
        (relay.cli, [], "load_relay_config", RelayConfigError("listen 'x' is not host:port")),
        (agent.cli, ["--config", "a.yaml"], "load_agent_config", AgentConfigError("relay.url is required")),
    ]:
        def fail(*args: Any, exc: Exception = exc, **kwargs: Any) -> Any:
            raise exc
        monkeypatch.setattr(module, loader, fail)
        assert module.main(argv) == ConfigError.exit_code
        assert capsys.readouterr().err.count("\n") == 1
