"""Argument parsers whose ``--help`` is written for users.

:class:`CommandParser` is an ``argparse.ArgumentParser`` that keeps the
layout of its description and epilog (examples stay on their lines), carries
a one-line ``summary`` and remembers the options and subcommands added to it,
so a test can render every ``--help`` of every command and check each one
without argparse's private attributes.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, TypeAlias

from cmdline.errors import exit_code_table

__all__ = [
    "DISTRIBUTION",
    "CommandParser",
    "Subcommands",
    "add_command",
    "add_version_argument",
    "exit_codes_epilog",
    "help_epilog",
    "installed_version",
    "version_text",
]

#: How a command that serves until stopped ends: not an interruption.
SERVING_STOP_NOTE = "(arc-relay, arc-agent and arc-proxy stopped while serving exit 0)"

#: The installed distribution whose version ``--version`` reports.
DISTRIBUTION = "cluster-connect"


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that records what is added to it.

    Args:
        summary: the one line shown for this command in its parent's list.
        *args, **kwargs: as ``argparse.ArgumentParser``; the formatter
            defaults to ``RawDescriptionHelpFormatter``.
    """

    def __init__(self, *args: Any, summary: str = "", **kwargs: Any) -> None:
        # Set before super().__init__, which adds -h/--help through add_argument.
        self.options: list[argparse.Action] = []
        self.subcommand_groups: list[Subcommands] = []
        self.summary = summary
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.options.append(action)
        return action

    # One signature instead of typeshed's two overloads: subcommands are always
    # CommandParsers (argparse's default parser_class is the parent's class).
    def add_subparsers(self, **kwargs: Any) -> Subcommands:  # type: ignore[override]
        group: Subcommands = super().add_subparsers(**kwargs)
        self.subcommand_groups.append(group)
        return group

    @property
    def subcommands(self) -> dict[str, CommandParser]:
        """Each subcommand's name and parser (``Action.choices`` of the subparsers)."""
        return {name: child for group in self.subcommand_groups
                for name, child in (group.choices or {}).items()}


#: What ``CommandParser.add_subparsers`` returns: add subcommands to it. (A
#: string: argparse's class is generic only to type checkers.)
Subcommands: TypeAlias = "argparse._SubParsersAction[CommandParser]"


def add_command(
    sub: Subcommands,
    name: str,
    *,
    summary: str,
    examples: Sequence[str],
    description: str = "",
    notes: str = "",
) -> CommandParser:
    """Add subcommand ``name`` with a one-line summary, a description and examples.

    Args:
        sub: what ``add_subparsers`` returned on a :class:`CommandParser`.
        name: the subcommand.
        summary: one line, shown in the parent's list and atop the subcommand's help.
        examples: command lines shown under "examples:" in its help.
        description: more text under the summary (optional).
        notes: text between the examples and the exit-code pointer (optional).

    Returns:
        The subcommand's parser, to add options to; ``command_prog`` in the
        parsed namespace is its full name (``arcctl role assign``).
    """
    text = summary if not description else f"{summary}\n\n{description}"
    parser = sub.add_parser(name, help=summary, summary=summary, description=text)
    root = parser.prog.split()[0]
    parser.epilog = help_epilog(examples, notes=notes, exit_codes=False) + "\n\n" \
        + _exit_codes_pointer(root)
    # The words the user typed ("arcctl role assign"), for the error line.
    parser.set_defaults(command_prog=parser.prog)
    return parser


def installed_version() -> str:
    """The version of the installed ``cluster-connect`` distribution."""
    # Imported here: it costs more than the rest of the command line, and
    # arcctl get-token (run by kubectl on every call) never needs it.
    import importlib.metadata

    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed; run ./run test or pip install -e .)"


def version_text(prog: str) -> str:
    """``PROG VERSION``, the same format for every command."""
    return f"{prog} {installed_version()}"


class _VersionAction(argparse.Action):
    """``--version``: looked up only when asked (``arcctl get-token`` runs on
    every kubectl call and should not pay for reading package metadata)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: Any = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0,
                         help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        print(version_text(parser.prog))  # stdout, as argparse's own "version" action
        parser.exit()


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--version`` (prints ``PROG VERSION`` and exits 0)."""
    parser.add_argument("--version", action=_VersionAction,
                        help="print the program name and version, then exit")


def exit_codes_epilog() -> str:
    """The exit-code table as help text."""
    lines = ["exit codes:"]
    lines += [f"  {code:<4} {meaning}" for code, meaning in exit_code_table()]
    lines.append(f"  {SERVING_STOP_NOTE}")
    return "\n".join(lines)


def help_epilog(examples: Sequence[str], *, notes: str = "", exit_codes: bool = True) -> str:
    """An epilog: examples, optional notes, then the exit-code table.

    Args:
        examples: command lines; a line starting with ``#`` is a comment above the next.
        notes: a paragraph after the examples.
        exit_codes: append the whole table (top-level commands).
    """
    parts = ["examples:\n" + "\n".join(f"  {line}" for line in examples)]
    if notes:
        parts.append(notes.rstrip("\n"))
    if exit_codes:
        parts.append(exit_codes_epilog())
    return "\n\n".join(parts)


def _exit_codes_pointer(command: str) -> str:
    return (f"exit codes: 0 success, 1-9 an error the message explains, 70 internal error;\n"
            f"the table: {command} --help")
