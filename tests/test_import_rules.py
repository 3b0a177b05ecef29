"""The import rules import-linter cannot check: no package reaches a private
(``_name``) attribute of another of our packages.

import-linter (``[tool.importlinter]`` in pyproject.toml, run by ``./run test``)
checks modules: layers, forbidden imports and ``_name`` modules. A name is a
module attribute to it, so ``from identity.oidc import _helper`` or
``tunnel.aio._thing`` pass it; this test reads every module's syntax tree instead.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Our importable packages: what pyproject.toml installs ("tunnel*" -> "tunnel").
PACKAGES = tuple(sorted(pattern.rstrip("*").rstrip(".")
                        for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]))


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield package, path


def foreign_private_names(package: str, source: str) -> list[str]:
    """``module:name`` for every private name of another of our packages that
    ``source`` (a module of ``package``) imports or reads as an attribute."""
    found: list[str] = []
    tree = ast.parse(source)
    # Local names bound to one of our other packages' modules: `import tunnel.aio as t`.
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            top = node.module.split(".")[0]
            if top in PACKAGES and top != package:
                found += [f"{node.module}:{a.name}" for a in node.names if _is_private(a.name)]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top in PACKAGES and top != package:
                    bound.add(alias.asname or top)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in bound:
                found.append(f"{ast.unparse(node.value)}:{node.attr}")
    return found


def test_every_installed_package_is_under_the_import_contracts() -> None:
    """A new package (demo/, configfile/, ...) must join import-linter's
    root_packages, or the contracts would not see its imports at all."""
    assert set(PYPROJECT["tool"]["importlinter"]["root_packages"]) == set(PACKAGES)


def test_no_package_reads_another_packages_private_names() -> None:
    """Every cross-package import and module attribute access names a public name."""
    offences = [
        f"{path.relative_to(ROOT)}: {name}"
        for package, path in _modules()
        for name in foreign_private_names(package, path.read_text())
    ]
    assert offences == []


@pytest.mark.parametrize("source", [
    "from tunnel.aio import _private\n",
    "import tunnel.aio\ntunnel.aio._private()\n",
    "import tunnel.aio as t\nt._private\n",
], ids=["from-import", "module-attribute", "aliased-module"])
def test_private_name_check_finds_a_reach_into_tunnel(source: str) -> None:
    """The check is not vacuous: each spelling of a reach into tunnel is reported."""
    assert foreign_private_names("client", source) != []


@pytest.mark.parametrize("source", [
    "from tunnel import TunnelSession\n",
    "from tunnel.aio import __all__\n",
    "from client.auth import _own\n",  # its own package's private names are its business
    "import os\nos._exit\n",  # not one of ours
], ids=["public", "dunder", "own-package", "other-library"])
def test_private_name_check_lets_public_and_own_names_pass(source: str) -> None:
    """Public names, dunders, a package's own privates and other libraries pass."""
    assert foreign_private_names("client", source) == []
