"""Every relative link in README.md and docs/*.md points at a file of the
repository: a reader who clones it never follows a dead link (issue 13 item 8)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
# [text](target) and [text](target "title"); images too. Reference-style
# definitions: "[name]: target".
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.MULTILINE)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # https:, mailto:, ...
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
# A file named in prose as code, `docs/agent-rbac.md`: a path with a folder.
CODE_SPAN_PATH = re.compile(r"`([\w.-]*/[\w./-]*\.md)`")


def relative_links(text: str) -> list[str]:
    """Link targets that name a file of the repository (no scheme, not a bare
    ``#anchor``), without their ``#anchor``; code blocks are not prose."""
    prose = FENCE.sub("", text)
    targets = INLINE_LINK.findall(prose) + REFERENCE_LINK.findall(prose)
    return [t.split("#", 1)[0] for t in targets if not EXTERNAL.match(t) and not t.startswith("#")]


def named_files(text: str) -> list[str]:
    """Markdown files named as code in prose (``docs/x.md``), read from the
    repository root."""
    return CODE_SPAN_PATH.findall(FENCE.sub("", text))


def test_documents_are_found() -> None:
    """The check reads README.md and the docs, including docs/architecture.md."""
    names = {p.relative_to(ROOT).as_posix() for p in DOCUMENTS}
    assert {"README.md", "docs/architecture.md", "docs/limits.md"} <= names


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_point_at_existing_files(document: Path) -> None:
    """Each relative link resolves, from the document's folder, to a file or
    folder inside the repository."""
    dead = []
    for target in relative_links(document.read_text()):
        resolved = (document.parent / target).resolve()
        if not resolved.is_relative_to(ROOT) or not resolved.exists():
            dead.append(target)
    for name in named_files(document.read_text()):
        resolved = (ROOT / name).resolve()
        if not resolved.is_relative_to(ROOT) or not resolved.exists():
            dead.append(name)
    assert dead == []


def test_link_reader_finds_dead_and_skips_external_links() -> None:
    """The reader is not vacuous: relative links are found (anchors cut),
    external links, bare anchors and code blocks are skipped."""
    text = (
        "see [arch](../shared/ARCHITECTURE.md) and [p](tunnel/PROTOCOL.md#frames) "
        "and [w](https://example.com/x.md) and [a](#limits)\n"
        "```\n[in code](nowhere.md)\n```\n"
        "[ref]: docs/limits.md\n"
    )
    assert relative_links(text) == ["../shared/ARCHITECTURE.md", "tunnel/PROTOCOL.md",
                                    "docs/limits.md"]
    assert named_files("read `../shared/ARCHITECTURE.md`, not `README.md`") == [
        "../shared/ARCHITECTURE.md"]


# docs/limits.md names the test that hits each bound as `file::name` under tests/.
LIMITS_TEST_REF = re.compile(r"([\w/]+\.py)::(\w+)")


def test_every_test_named_in_the_limits_table_exists() -> None:
    """Each bound's test in docs/limits.md is a test function of that file."""
    text = (ROOT / "docs" / "limits.md").read_text()
    refs = LIMITS_TEST_REF.findall(text)
    assert len(refs) > 50, "the table names its tests as file::name"
    missing = []
    for file, name in refs:
        path = ROOT / "tests" / file
        if not path.is_file() or not re.search(rf"^\s*(async )?def {name}\b", path.read_text(), re.MULTILINE):
            missing.append(f"{file}::{name}")
    assert not missing, missing
