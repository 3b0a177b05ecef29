"""Every ``--help`` of every command and subcommand is written for users:
no reStructuredText markup or internal notes, a one-line summary, a
description of every flag, examples, and the exit codes."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

import pytest

import agent.cli
import client.arcctl
import client.proxy_cli
import relay.cli
from cmdline import CommandParser, exit_codes_epilog

TOP_LEVEL = {
    "arc-relay": relay.cli.build_parser,
    "arc-agent": agent.cli.build_parser,
    "arc-proxy": client.proxy_cli.build_parser,
    "arcctl": client.arcctl.build_parser,
}
# Markup that means a docstring leaked into help: ``literal``, :role:`x`, .. directive
RST = re.compile(r"``|:[a-z]+:`|^\s*\.\. ", re.M)
INTERNAL = re.compile(r"\b(later|TODO|FIXME|XXX)\b", re.I)


def _walk(parser: CommandParser) -> Iterator[CommandParser]:
    yield parser
    for child in parser.subcommands.values():
        yield from _walk(child)


def _every_parser() -> Iterator[tuple[str, CommandParser]]:
    for build in TOP_LEVEL.values():
        for parser in _walk(build()):
            yield parser.prog, parser


EVERY = list(_every_parser())


def test_every_command_and_subcommand_is_covered() -> None:
    """The walk reaches the subcommands (so the checks below are not vacuous)."""
    progs = {prog for prog, _ in EVERY}
    assert {"arcctl list", "arcctl show", "arcctl connect", "arcctl delete", "arcctl demo",
            "arcctl get-token", "arcctl role", "arcctl role assign", "arcctl role import"} <= progs
    assert set(TOP_LEVEL) <= progs


@pytest.mark.parametrize(("prog", "parser"), EVERY, ids=[p for p, _ in EVERY])
def test_help_has_no_markup_or_internal_notes(prog: str, parser: CommandParser) -> None:
    """The rendered help contains no RST markup and no "later"/"TODO"."""
    text = parser.format_help()
    assert not RST.search(text), f"{prog} --help shows markup: {RST.search(text)}"
    assert not INTERNAL.search(text), f"{prog} --help has an internal note: {INTERNAL.search(text)}"


@pytest.mark.parametrize(("prog", "parser"), EVERY, ids=[p for p, _ in EVERY])
def test_every_option_has_a_description(prog: str, parser: CommandParser) -> None:
    """Each flag and argument says what it does."""
    for action in parser.options:
        assert action.help and action.help != argparse.SUPPRESS and len(action.help) > 8, \
            f"{prog} {'/'.join(action.option_strings) or action.dest} has no help"


@pytest.mark.parametrize(("prog", "parser"), EVERY, ids=[p for p, _ in EVERY])
def test_every_command_has_a_description_and_an_example(prog: str, parser: CommandParser) -> None:
    """A description, and an "examples:" section whose lines run this very command."""
    assert parser.description and len(parser.description) > 20, prog
    epilog = parser.epilog or ""
    assert "examples:\n" in epilog, prog
    examples = epilog.split("examples:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert any(line.strip().startswith(prog + " ") or line.strip() == prog for line in examples), \
        f"{prog}: no example runs it"


@pytest.mark.parametrize(("prog", "parser"), EVERY, ids=[p for p, _ in EVERY])
def test_subcommands_have_a_one_line_summary_in_their_parent(prog: str, parser: CommandParser) -> None:
    """Each subcommand is listed in its parent's help with its one-line summary."""
    for name, child in parser.subcommands.items():
        assert child.summary and "\n" not in child.summary, child.prog
        assert child.summary in parser.format_help(), f"{prog} --help does not list {name}"


@pytest.mark.parametrize(("prog", "parser"), EVERY, ids=[p for p, _ in EVERY])
def test_commands_that_run_take_the_common_flags(prog: str, parser: CommandParser) -> None:
    """Every command that runs something takes --debug and --log-format."""
    if parser.subcommands:
        return
    flags = {s for action in parser.options for s in action.option_strings}
    assert {"--debug", "--log-format"} <= flags, prog


@pytest.mark.parametrize("prog", list(TOP_LEVEL))
def test_top_level_help_shows_version_and_the_exit_code_table(prog: str) -> None:
    """--version is offered and the whole exit-code table ends the help."""
    parser = TOP_LEVEL[prog]()
    text = parser.format_help()
    assert "--version" in text
    assert exit_codes_epilog() in text
