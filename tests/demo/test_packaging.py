"""Where the demo lives and what ships: ``client`` never imports the demo or
the sandbox, the relay and agent images leave both out, the ``demo`` extra
carries what they import, and ``arcctl demo`` forwards exactly the flags of
``python -m demo``."""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from client.arcctl import build_parser as arcctl_parser
from demo.cli import build_parser as demo_parser

ROOT = Path(__file__).resolve().parents[2]
OURS = {"tunnel", "relay", "agent", "client", "certs", "sandbox", "demo", "identity", "logfmt", "cmdline"}
# Import name -> distribution name, where they differ.
DIST_OF = {"yaml": "pyyaml", "jwt": "pyjwt"}


def _our_packages_imported_by(code: str) -> set[str]:
    """Top-level packages of ours in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{n.split('.')[0] for n in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=120).stdout
    return set(json.loads(out.splitlines()[-1])) & OURS


def _dist_name(requirement: str) -> str:
    return re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower()


def _pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_client_imports_neither_sandbox_nor_demo_nor_agent() -> None:
    """Importing every module of ``client/`` pulls in no sandbox, demo or agent module."""
    code = ("import importlib, pkgutil, client\n"
            "for m in pkgutil.iter_modules(client.__path__):\n"
            "    importlib.import_module('client.' + m.name)")
    imported = _our_packages_imported_by(code)
    assert "client" in imported
    assert not imported & {"sandbox", "demo", "agent"}, imported


def test_containerfile_copies_what_the_daemons_import_and_not_the_demo() -> None:
    """The images get every package of ours that ``arc-relay`` and ``arc-agent``
    import, neither ``sandbox/`` nor ``demo/``, and are installed without extras.
    The Containerfile copies the build context (``COPY . .``) less what
    ``.containerignore`` leaves out."""
    text = (ROOT / "deploy" / "Containerfile").read_text()
    assert re.search(r"^COPY \. \.$", text, re.MULTILINE), "the build copies the whole context"
    ignored = {line.strip() for line in (ROOT / ".containerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    copied = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()} - ignored
    needed = _our_packages_imported_by("import relay.cli, agent.cli")
    assert needed <= copied, needed - copied
    assert not copied & {"sandbox", "demo"}
    installs = re.findall(r"pip install [^\n]*", text)
    assert installs and all("[" not in line for line in installs), installs


def test_demo_extra_covers_what_sandbox_and_demo_import() -> None:
    """Every third-party package that ``sandbox/`` or ``demo/`` imports is a core
    dependency or in the ``demo`` extra; ``test`` includes ``demo``; protobuf is
    gone and h11 is a test dependency only."""
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    core = {_dist_name(r) for r in project["dependencies"]}
    extras = project["optional-dependencies"]
    demo_extra = {_dist_name(r) for r in extras["demo"]}
    imported: set[str] = set()
    for package in ("sandbox", "demo"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.split(".")[0])
    third_party = {n for n in imported - OURS - {"__future__"} if n not in sys.stdlib_module_names}
    assert third_party, "the scan found no third-party import at all"
    missing = {DIST_OF.get(n, n) for n in third_party} - demo_extra
    assert not missing, f"imported by sandbox/ or demo/ but not in the demo extra: {missing}"
    assert "cluster-connect[demo]" in extras["test"]
    assert "protobuf" not in core
    assert "h11" not in core and "h11" in {_dist_name(r) for r in extras["test"]}


def test_pyproject_license_is_an_spdx_string() -> None:
    """``license`` is the SPDX string (a table makes setuptools print a
    deprecation banner on every install) and the build requires a setuptools
    that reads it."""
    data = _pyproject()
    project = data["project"]
    assert isinstance(project, dict) and project["license"] == "Apache-2.0"
    assert not [c for c in project.get("classifiers", []) if c.startswith("License ::")]
    build = data["build-system"]
    assert isinstance(build, dict) and "setuptools>=77" in build["requires"]


def _help_flags(parser: argparse.ArgumentParser, argv: list[str],
                capsys: pytest.CaptureFixture[str]) -> set[str]:
    """The long flags that ``--help`` of ``argv`` lists."""
    with pytest.raises(SystemExit):
        parser.parse_args([*argv, "--help"])
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", capsys.readouterr().out)) - {"--help"}


def test_arcctl_demo_declares_the_flags_of_python_m_demo(capsys: pytest.CaptureFixture[str]) -> None:
    """``arcctl demo`` (which forwards its flags to ``python -m demo``) and the
    demo's own parser have the same flags, ``--no-restart`` included; arcctl adds
    only its common ``--config``."""
    demo_flags = _help_flags(demo_parser(), [], capsys)
    assert "--no-restart" in demo_flags
    assert _help_flags(arcctl_parser(), ["demo"], capsys) - {"--config"} == demo_flags
