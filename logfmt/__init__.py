"""One log record, one line: the formatter every cluster-connect daemon uses.

``--log-format text`` (default) keeps the familiar
``TIME LEVEL LOGGER message`` layout but escapes every character that is not
printable (newline, carriage return, ESC, C1 controls, bidi overrides,
U+2028...) repr-style (``\\n``, ``\\x1b``, ``\\u202e``), so no value a peer
controls (an agent's version string, a cluster name, a token's claim) can start
a forged line or drive the reader's terminal. ``--log-format json`` writes one
JSON object per line (``json.dumps`` escapes the same characters).

Tracebacks are part of a record only when a caller asked for them (at DEBUG
in our code); in text mode they follow on indented lines, in JSON mode they
are one ``traceback`` string field.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, TextIO

__all__ = ["LOG_FORMATS", "JsonFormatter", "TextFormatter", "add_log_format_argument",
           "configure_logging", "escape_control"]

LOG_FORMATS = ("text", "json")
TEXT_LAYOUT = "%(asctime)s %(levelname)s %(name)s %(message)s"

_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(ch: str) -> str:
    if ch in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[ch]
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape_control(text: str) -> str:
    """``text`` with every non-printable character (anything but a space that
    ``str.isprintable`` refuses) replaced by its repr-style escape."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == " " else _escape_char(ch) for ch in text)


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER message`` with the message escaped to one line."""

    def __init__(self) -> None:
        super().__init__(TEXT_LAYOUT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        # format() sets record.message afresh for each handler: rewriting it is safe.
        record.message = escape_control(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        # Indented continuation lines: a reader (or grep) tells them from records.
        lines = super().formatException(ei).splitlines()
        return "\n".join("    " + escape_control(line) for line in lines)

    def formatStack(self, stack_info: str) -> str:
        return "\n".join("    " + escape_control(line) for line in stack_info.splitlines())


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time``, ``level``, ``logger``, ``message``
    and, when present, ``exception`` (type name) and ``traceback``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and record.exc_info[0] is not None:
            entry["exception"] = record.exc_info[0].__name__
            entry["traceback"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=True, default=str)


def add_log_format_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--log-format text|json`` to a command line."""
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                        help="log lines as escaped text (default) or one JSON object per line")


def configure_logging(level: int, log_format: str = "text", stream: TextIO | None = None) -> None:
    """Send every logger's records to ``stream`` (default stderr), one line each.

    Args:
        level: the root level (``logging.INFO``...).
        log_format: ``text`` or ``json``.
        stream: where lines go.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
