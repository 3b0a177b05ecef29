"""Validation errors as lines a user can act on: ``FILE: KEY.PATH: expected X, got Y``."""

from __future__ import annotations

import difflib
import re
import reprlib
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from configfile.model import models_in, secret_paths

__all__ = ["problem_lines"]

# Longest repr of a given value shown in a message; a pasted certificate or a
# long list is cut, the line stays readable.
MAX_SHOWN_VALUE = 60

# repr() bounded in depth and width before it is cut: YAML aliases can make a
# small file a structure too large to print (each alias is the same object again).
_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 8
_REPR.maxstring = _REPR.maxother = 4 * MAX_SHOWN_VALUE

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")

# pydantic error type -> what was expected (ctx values filled in).
_EXPECTED = {
    "int_type": "expected a whole number",
    "float_type": "expected a number",
    "string_type": "expected a string",
    "bool_type": "expected true or false",
    "list_type": "expected a list",
    "tuple_type": "expected a list",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "greater_than": "expected {number} > {gt}",
    "greater_than_equal": "expected {number} >= {ge}",
    "less_than": "expected {number} < {lt}",
    "less_than_equal": "expected {number} <= {le}",
    "literal_error": "expected {expected}",
    "string_too_short": "expected at least {min_length} character(s)",
    "too_short": "expected at least {min_length} item(s)",
    "finite_number": "expected a finite number",
}


def problem_lines(error: ValidationError, model: type[BaseModel], source: str, at: str = "") -> list[str]:
    """One line per problem in ``error`` (raised validating ``model``), each
    starting with ``source`` (the file name); ``at`` is the key path of the
    validated section inside its file ("" for the whole file)."""
    secrets = secret_paths(model)
    return [f"{source}: {_path(e['loc'], at)}: {_problem(e, model, secrets)}" for e in error.errors()]


def _path(loc: tuple[int | str, ...], at: str = "") -> str:
    out = at
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            # A key as the user wrote it may hold anything (a newline, a quote): a
            # key that is not a plain name is shown as its repr, so the line stays one.
            name = part if _PLAIN_KEY.fullmatch(part) else repr(part)
            out += f".{name}" if out else name
    return out or "(top level)"


def _problem(e: ErrorDetails, model: type[BaseModel], secrets: set[tuple[str, ...]]) -> str:
    kind, loc, ctx = e["type"], e["loc"], e.get("ctx") or {}
    if kind == "extra_forbidden":
        return _unknown_key(str(loc[-1]), _model_at(model, loc[:-1]))
    if kind == "missing":
        return "required key is missing"
    if kind == "value_error":
        what = str(ctx.get("error", e["msg"]))
    elif kind in _EXPECTED:
        number = "a whole number" if _annotation_at(model, loc) is int else "a number"
        what = _EXPECTED[kind].format(number=number, **{k: _number(v) for k, v in ctx.items()})
    else:
        what = e["msg"][:1].lower() + e["msg"][1:]
    if tuple(p for p in loc if isinstance(p, str)) in secrets:
        return f"{what} (the value given is a secret and not shown)"
    if isinstance(e["input"], dict):
        # A whole section: its content says nothing more and may hold a secret.
        return what
    return f"{what}, got {_shown(e['input'])}"


def _number(value: Any) -> Any:
    # 60.0 reads as 60 in a bound; any other value stays as it is.
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _shown(value: Any) -> str:
    text = _REPR.repr(value)
    return text if len(text) <= MAX_SHOWN_VALUE else text[:MAX_SHOWN_VALUE - 3] + "..."


def _unknown_key(key: str, where: type[BaseModel] | None) -> str:
    allowed = sorted(where.model_fields) if where is not None else []
    close = difflib.get_close_matches(key, allowed, n=1)
    if close:
        return f"unknown key {key!r}; did you mean {close[0]!r}?"
    return f"unknown key {key!r}; the keys here are {', '.join(allowed)}" if allowed else f"unknown key {key!r}"


def _annotation_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> Any:
    """The annotation of the field at a key path (None if the path names no field)."""
    parent = _model_at(model, loc[:-1]) if loc and isinstance(loc[-1], str) else None
    info = parent.model_fields.get(str(loc[-1])) if parent is not None else None
    return info.annotation if info is not None else None


def _model_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The section model at a key path (list indices skipped), if the path leads to one."""
    current: type[BaseModel] = model
    for part in loc:
        if isinstance(part, int):
            continue
        info = current.model_fields.get(part)
        found = models_in(info.annotation) if info is not None else []
        if not found:
            return None
        current = found[0]
    return current
