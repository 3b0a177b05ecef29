"""Log messages are words: none starts with a one-character marker such as
``x conn 3:``, ``= session open`` or ``! dispatch failed`` (issue 14, item 7).

An AST walk over every package finds each call ``<anything>.debug/info/
warning/error/exception/critical(MESSAGE, ...)`` whose message is a string
constant or an f-string, and fails on a message that starts with one
non-alphanumeric character followed by a space.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.support.processes import ROOT

LOG_METHODS = frozenset({"debug", "info", "warning", "error", "exception", "critical"})
# One character that is not a letter, digit or quote, then a space: "x " too,
# the old "connection closed" marker.
MARKER = re.compile(r"^(?:[^\w\s\"'%{(\[]|x) ")
SKIP_DIRS = frozenset({".venv", "tests", "build", ".git", "node_modules"})


def _leading_text(node: ast.expr) -> str | None:
    """The literal start of a str constant or f-string (None otherwise)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        text = ""
        for part in node.values:
            if isinstance(part, ast.Constant) and isinstance(part.value, str):
                text += part.value
            else:
                break
        return text
    return None


def marked_messages(source: str, filename: str = "<snippet>") -> list[str]:
    """``file:line: message`` for every log call whose message starts with a marker."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in LOG_METHODS and node.args):
            continue
        text = _leading_text(node.args[0])
        if text is not None and MARKER.match(text):
            found.append(f"{filename}:{node.lineno}: {text!r}")
    return found


def _package_files() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py")
                  if not SKIP_DIRS.intersection(p.relative_to(ROOT).parts[:-1]))


def test_log_messages_start_with_words_not_markers() -> None:
    """No log call in any package starts its message with a marker."""
    files = _package_files()
    assert any(p.parts[-2:] == ("client", "listener.py") for p in files), "the walk missed the packages"
    found = [hit for p in files for hit in marked_messages(p.read_text(), str(p.relative_to(ROOT)))]
    assert not found, "log messages with a marker instead of words:\n" + "\n".join(found)


def test_the_check_finds_markers_in_a_synthetic_snippet() -> None:
    """The walk flags marker messages (plain, f-string, any logger name,
    log.exception) and passes words, including messages that start with a
    placeholder."""
    snippet = '''
log.warning("x conn %d: closed", 1)
self._log.info(f"= {name} connected to relay")
logger.exception("! dispatch failed")
log.debug("> conn %d -> stream %s", 1, 2)
log.info("connection %d closed", 1)
log.info(f"{name} connected to the relay")
log.info("%s renewed its relay session", name)
print("x not a log call")
'''
    hits = marked_messages(snippet)
    assert [h.split(": ", 1)[1] for h in hits] == [
        "'x conn %d: closed'", "'= '", "'! dispatch failed'", "'> conn %d -> stream %s'"]
