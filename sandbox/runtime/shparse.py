"""A tokenizer and parser for the small POSIX-shell subset of ``sh -c``.

Supported: words with '...' / "..." / backslash quoting, ``$NAME``,
``${NAME}`` and ``$?`` expansion (not inside single quotes), ``;`` ``&``
(run in sequence: the sandbox has no job control) and newlines, ``&&``,
``||``, pipes, and redirections ``>``, ``>>``, ``<``, ``N>``, ``N>>``,
``N>&M``. No globbing, subshells, functions or control flow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# A word is a list of parts: (text, expandable). Expansion happens at run
# time because ``$?`` changes between commands.
Word = list[tuple[str, bool]]

_VAR = re.compile(r"\$(\?|[A-Za-z_][A-Za-z0-9_]*|\{[A-Za-z_][A-Za-z0-9_]*\})")
_OPERATORS = ("&&", "||", ">>", ">&", ";", "&", "|", ">", "<", "\n")


class ShellSyntaxError(Exception):
    """The script does not parse; ``str()`` is sh's message."""


@dataclass
class Redirect:
    fd: int  # 0 stdin, 1 stdout, 2 stderr
    op: str  # "<", ">", ">>", ">&"
    target: Word


@dataclass
class Command:
    words: list[Word] = field(default_factory=list)
    redirects: list[Redirect] = field(default_factory=list)


@dataclass
class Pipeline:
    commands: list[Command]


@dataclass
class AndOr:
    first: Pipeline
    rest: list[tuple[str, Pipeline]]  # ("&&" | "||", pipeline)


@dataclass
class _Tok:
    kind: str  # "word", "op", "ionum"
    value: str = ""
    word: Word | None = None


def expand(word: Word, env: dict[str, str], status: int) -> str:
    """The text of a word after parameter expansion."""
    out = []
    for text, expandable in word:
        if not expandable:
            out.append(text)
            continue

        def sub(m: re.Match[str]) -> str:
            name = m.group(1).strip("{}")
            return str(status) if name == "?" else env.get(name, "")

        out.append(_VAR.sub(sub, text))
    return "".join(out)


def tokenize(script: str) -> list[_Tok]:
    """Split a script into words and operators."""
    toks: list[_Tok] = []
    i, n = 0, len(script)
    word: Word = []
    in_word = False

    def end_word() -> None:
        nonlocal word, in_word
        if in_word:
            toks.append(_Tok("word", word=word))
        word, in_word = [], False

    while i < n:
        c = script[i]
        if c in " \t":
            end_word()
            i += 1
        elif c == "#" and not in_word:
            while i < n and script[i] != "\n":
                i += 1
        elif c == "'":
            j = script.find("'", i + 1)
            if j < 0:
                raise ShellSyntaxError("Syntax error: Unterminated quoted string")
            word.append((script[i + 1:j], False))
            in_word, i = True, j + 1
        elif c == '"':
            j, buf = i + 1, []
            while j < n and script[j] != '"':
                if script[j] == "\\" and j + 1 < n and script[j + 1] in '"\\$`':
                    buf.append(script[j + 1])
                    j += 2
                else:
                    buf.append(script[j])
                    j += 1
            if j >= n:
                raise ShellSyntaxError("Syntax error: Unterminated quoted string")
            word.append(("".join(buf), True))
            in_word, i = True, j + 1
        elif c == "\\":
            if i + 1 < n and script[i + 1] != "\n":
                word.append((script[i + 1], False))
                in_word = True
            i += 2
        elif any(script.startswith(op, i) for op in _OPERATORS):
            op = next(op for op in _OPERATORS if script.startswith(op, i))
            if op in (">", ">>", "<", ">&") and in_word and all(
                expandable and t.isdigit() for t, expandable in word
            ) and word:
                # "2>file": the digits directly before the operator are a fd.
                toks.append(_Tok("ionum", "".join(t for t, _ in word)))
                word, in_word = [], False
            end_word()
            toks.append(_Tok("op", op))
            i += len(op)
        else:
            j = i
            while j < n and script[j] not in " \t'\"\\;&|<>\n":
                j += 1
            word.append((script[i:j], True))
            in_word, i = True, j
    end_word()
    return toks


def parse(script: str) -> list[AndOr]:
    """Parse a script into and-or lists, run one after another."""
    toks = tokenize(script)
    pos = 0

    def peek() -> _Tok | None:
        return toks[pos] if pos < len(toks) else None

    def command() -> Command:
        nonlocal pos
        cmd = Command()
        while (t := peek()) is not None:
            if t.kind == "word":
                assert t.word is not None
                cmd.words.append(t.word)
                pos += 1
            elif t.kind == "ionum" or (t.kind == "op" and t.value in (">", ">>", "<", ">&")):
                fd = None
                if t.kind == "ionum":
                    fd = int(t.value)
                    pos += 1
                    t = peek()
                    assert t is not None
                op = t.value
                pos += 1
                target = peek()
                if target is None or target.kind != "word" or target.word is None:
                    raise ShellSyntaxError(f"Syntax error: redirection {op} without a target")
                pos += 1
                if fd is None:
                    fd = 0 if op == "<" else 1
                cmd.redirects.append(Redirect(fd, op, target.word))
            else:
                break
        if not cmd.words and not cmd.redirects:
            bad = peek()
            raise ShellSyntaxError(
                f'Syntax error: "{bad.value if bad else "end of file"}" unexpected'
            )
        return cmd

    def pipeline() -> Pipeline:
        nonlocal pos
        cmds = [command()]
        while (t := peek()) is not None and t.kind == "op" and t.value == "|":
            pos += 1
            cmds.append(command())
        return Pipeline(cmds)

    result: list[AndOr] = []
    while pos < len(toks):
        t = peek()
        if t is not None and t.kind == "op" and t.value in (";", "&", "\n"):
            pos += 1
            continue
        first = pipeline()
        rest: list[tuple[str, Pipeline]] = []
        while (t := peek()) is not None and t.kind == "op" and t.value in ("&&", "||"):
            pos += 1
            while (t2 := peek()) is not None and t2.kind == "op" and t2.value == "\n":
                pos += 1
            rest.append((t.value, pipeline()))
        result.append(AndOr(first, rest))
        t = peek()
        if t is not None and not (t.kind == "op" and t.value in (";", "&", "\n")):
            raise ShellSyntaxError(f'Syntax error: "{t.value}" unexpected')
    return result
