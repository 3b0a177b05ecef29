"""arcctl output and daemon logs cannot be driven by what an agent reported:
tables escape control characters, json/yaml stay valid and lossless, log
records stay one line in text and JSON format."""

from __future__ import annotations

import io
import json
import logging

import pytest
import yaml

from client.arcctl import build_parser as arcctl_parser
from client.output import render
from client.proxy_cli import build_parser as proxy_parser
from logfmt import JsonFormatter, TextFormatter, configure_logging, escape_control

HOSTILE = {
    "name": "demo",
    "resourceGroup": "default",
    "connectivityStatus": "Connected",
    "agentVersion": "1.0\n2026-12-03 INFO forged row\x1b]0;pwned\x07\x1b[2J\r\u202eabc\u2028x\x85",
    "kubernetesVersion": "v1.33.0",
    "totalNodeCount": 3,
    "lastConnectivityTime": "2026-12-03T00:00:00Z",
}
CONTROLS = ("\n", "\r", "\x1b", "\x07", "\u202e", "\u2028", "\x85")


def test_table_escapes_control_characters_to_one_row() -> None:
    """-o table: header plus exactly one line per cluster, no control character."""
    text = render([HOSTILE, {**HOSTILE, "name": "b"}], "table")
    rows = text.split("\n")
    assert len(rows) == 3
    assert not any(c in row for row in rows for c in CONTROLS)
    assert "\\n2026-12-03 INFO forged row\\x1b]0;pwned\\x07" in text
    assert "\\u202eabc\\u2028x\\x85" in text


def test_table_escapes_keys_of_other_listings() -> None:
    """A non-cluster listing uses the keys as headers: escaped too."""
    text = render([{"a\x1bb": "x\ny"}], "table")
    assert "\x1b" not in text and "\n" not in text.split("\n", 1)[1]


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_json_and_yaml_stay_valid_and_lossless(fmt: str) -> None:
    """-o json / -o yaml: parse back to the same value, no raw control character."""
    text = render([HOSTILE], fmt)
    back = json.loads(text) if fmt == "json" else yaml.safe_load(text)
    assert back == [HOSTILE]
    assert not any(c in text for c in ("\x1b", "\x07", "\r", "\u202e", "\x85"))


def test_escape_control_keeps_printable_text() -> None:
    """Printable text (accents included) is unchanged; backslashes stay single."""
    assert escape_control("Zürich cluster a\\b") == "Zürich cluster a\\b"
    assert escape_control("a\tb\x00\U000e0001") == "a\\tb\\x00\\U000e0001"


def _record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("line1\nline2")
        except ValueError:
            import sys
            exc_info = sys.exc_info()
    return logging.LogRecord("relay", logging.INFO, __file__, 1, msg, args, exc_info)


def test_text_log_format_escapes_every_field_to_one_line() -> None:
    """A value with a newline and ESC cannot start a second record."""
    line = TextFormatter().format(_record("agent metadata agentVersion=%s", HOSTILE["agentVersion"]))
    assert "\n" not in line and "\x1b" not in line
    assert line.endswith("agentVersion=1.0\\n2026-12-03 INFO forged row\\x1b]0;pwned\\x07\\x1b[2J\\r"
                         "\\u202eabc\\u2028x\\x85")


def test_text_log_traceback_lines_are_indented() -> None:
    """When a traceback is asked for, its lines are continuation lines."""
    lines = TextFormatter().format(_record("failed", exc=True)).split("\n")
    assert lines[0].endswith("failed") and all(line.startswith("    ") for line in lines[1:])
    assert any("ValueError: line1" in line for line in lines)


def test_json_log_format_is_one_object_per_line() -> None:
    """--log-format json: each record is one line that parses to the same message."""
    stream = io.StringIO()
    configure_logging(logging.INFO, "json", stream)
    try:
        logging.getLogger("relay").info("agent metadata agentVersion=%s", HOSTILE["agentVersion"])
        logging.getLogger("relay").info("second")
    finally:
        configure_logging(logging.WARNING, "text")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["message"] == f"agent metadata agentVersion={HOSTILE['agentVersion']}"
    assert first["level"] == "INFO" and first["logger"] == "relay"
    entry = json.loads(JsonFormatter().format(_record("x", exc=True)))
    assert entry["exception"] == "ValueError" and "line2" in entry["traceback"]


def test_every_cli_offers_log_format() -> None:
    """arc-relay, arc-agent, arc-proxy and arcctl accept --log-format json."""
    from agent import cli as agent_cli
    from relay import cli as relay_cli

    assert relay_cli.build_parser().parse_args(["--log-format", "json"]).log_format == "json"
    assert proxy_parser().parse_args(["-n", "x", "--log-format", "json"]).log_format == "json"
    assert arcctl_parser().parse_args(["list", "--log-format", "json"]).log_format == "json"
    with pytest.raises(SystemExit):
        agent_cli.main(["--log-format", "xml"])
