"""Validation errors as lines a user can act on: ``FILE: KEY.PATH: expected X, got Y``."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from configfile.model import models_in, secret_paths

__all__ = ["problem_lines"]

# Longest repr of a given value shown in a message; a pasted certificate or a
# long list is cut, the line stays readable.
MAX_SHOWN_VALUE = 60

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
    "greater_than": "expected a number > {gt}",
    "greater_than_equal": "expected a number >= {ge}",
    "less_than": "expected a number < {lt}",
    "less_than_equal": "expected a number <= {le}",
    "literal_error": "expected {expected}",
    "string_too_short": "expected at least {min_length} character(s)",
    "too_short": "expected at least {min_length} item(s)",
    "finite_number": "expected a finite number",
}


def problem_lines(error: ValidationError, model: type[BaseModel], source: str) -> list[str]:
    """One line per problem in ``error`` (raised validating ``model``), each
    starting with ``source`` (the file name)."""
    secrets = secret_paths(model)
    return [f"{source}: {_path(e['loc'])}: {_problem(e, model, secrets)}" for e in error.errors()]


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
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
        what = _EXPECTED[kind].format(**ctx)
    else:
        what = e["msg"][:1].lower() + e["msg"][1:]
    if isinstance(e["input"], dict):
        # A whole section: its content says nothing more and may hold a secret.
        return what
    if tuple(p for p in loc if isinstance(p, str)) in secrets:
        return f"{what} (the value given is a secret and not shown)"
    return f"{what}, got {_shown(e['input'])}"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= MAX_SHOWN_VALUE else text[:MAX_SHOWN_VALUE - 3] + "..."


def _unknown_key(key: str, where: type[BaseModel] | None) -> str:
    allowed = sorted(where.model_fields) if where is not None else []
    close = difflib.get_close_matches(key, allowed, n=1)
    if close:
        return f"unknown key {key!r}; did you mean {close[0]!r}?"
    return f"unknown key {key!r}; the keys here are {', '.join(allowed)}" if allowed else f"unknown key {key!r}"


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
