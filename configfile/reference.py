"""The config-file reference (``docs/config.md``), generated from the schemas::

    python -m configfile.reference > docs/config.md

Every key of every file is listed with its type, default and meaning (the
field's ``description``); tests/configfile/test_reference.py keeps the file
in step with the code.
"""

from __future__ import annotations

import importlib
import json
import sys
import types
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from configfile.model import marked_secret

__all__ = ["CONFIG_FILES", "reference"]

# (title, "module:Model") of every config file; named, not imported, so that
# configfile stays a leaf package that imports nothing of the project's.
CONFIG_FILES = (
    ("arc-relay (`arc-relay --config FILE`)", "relay.config_schema:RelayFile"),
    ("arc-agent (`arc-agent --config FILE`)", "agent.config:AgentFile"),
    ("client: arcctl and arc-proxy (`$ARC_CONFIG`, default `~/.config/cluster-connect/config.yaml`)",
     "client.config:ClientFile"),
)

INTRO = """\
# Config file reference

Generated from the schemas by `python -m configfile.reference > docs/config.md`; do not edit
by hand (tests/configfile/test_reference.py fails when this file and the code differ).

Rules shared by every file (`configfile/`):

- A key the schema does not know is refused, with a "did you mean" for a near miss.
- No type guessing: `"5"` is not a number, `5` is not `true`. A number is accepted where a
  name, an id or a password is expected (YAML reads `client_id: 2024` as a number).
- `key: null` (or `key:` with nothing after it) means the default.
- Relative file paths are resolved against the config file's folder; `~` is expanded.
- Files a config names are read when it is loaded, so a missing one is reported at once.
- Every problem is reported, one line each: `FILE: key.path: expected ..., got ...`;
  a bad YAML document as `FILE:LINE:COLUMN: not valid YAML: ...`. A secret's value is never shown.
- A config file larger than 1 MiB is refused, and so is a file it names (key, certificate,
  token, secret) larger than 1 MiB (a secret file: 16 KiB).
"""


def reference(files: tuple[tuple[str, str], ...] = CONFIG_FILES) -> str:
    """The Markdown reference of ``files`` (``(title, "module:Model")`` pairs)."""
    out = [INTRO]
    for title, target in files:
        module, _, name = target.partition(":")
        model = getattr(importlib.import_module(module), name)
        out.append(f"## {title}\n")
        _section(model, "", out, {})
    return "\n".join(out)


def _section(model: type[BaseModel], path: str, out: list[str], seen: dict[type[BaseModel], str]) -> None:
    heading = f"`{path}`" if path else "top level"
    if model in seen:
        out.append(f"### {heading}\n\nThe same keys as `{seen[model]}` above.\n")
        return
    seen[model] = path
    doc = " ".join((model.__doc__ or "").split())
    out.append(f"### {heading}\n\n{doc}\n")
    out.append("| key | type | default | meaning |")
    out.append("|---|---|---|---|")
    subsections: list[tuple[str, type[BaseModel]]] = []
    for key, info in model.model_fields.items():
        sub = _model_of(info.annotation)
        if sub is not None:
            list_of = get_origin(_without_none(info.annotation)) is list
            subsections.append((f"{path}.{key}" if path else key, sub))
            if list_of:
                subsections[-1] = (subsections[-1][0] + "[]", sub)
        meaning = info.description or ""
        if marked_secret(info.metadata, info.annotation):
            meaning += " Secret: never shown in an error."
        out.append(f"| `{key}` | {_type(info)} | {_default(info)} | {meaning.strip()} |")
    out.append("")
    for sub_path, sub in subsections:
        _section(sub, sub_path, out, seen)


def _without_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [a for a in get_args(annotation) if a is not type(None)]
        return rest[0] if len(rest) == 1 else annotation
    return annotation


def _model_of(annotation: Any) -> type[BaseModel] | None:
    annotation = _without_none(annotation)
    if get_origin(annotation) in (Union, types.UnionType):  # e.g. `str | Section`: the section
        models = [m for m in map(_model_of, get_args(annotation)) if m is not None]
        return models[0] if models else None
    if get_origin(annotation) is list:
        annotation = get_args(annotation)[0]
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


_NAMES = {int: "integer", float: "number", str: "string", bool: "boolean"}
_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


def _type_name(annotation: Any) -> str:
    annotation = _without_none(annotation)
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):  # several kinds (None already dropped)
        return " or ".join(_type_name(a) for a in get_args(annotation) if a is not type(None))
    if origin is Literal:
        return "one of " + ", ".join(f"`{v}`" for v in get_args(annotation))
    if origin is list:
        return f"list of {_type_name(get_args(annotation)[0])}"
    if origin is dict or annotation is dict:
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    if hasattr(annotation, "__metadata__"):  # Annotated[str, ...] inside a union
        return _type_name(get_args(annotation)[0])
    return _NAMES.get(annotation, str(annotation))


def _type(info: FieldInfo) -> str:
    bounds = [f"{sign} {getattr(meta, attr):g}" for meta in info.metadata
              for attr, sign in _BOUNDS if getattr(meta, attr, None) is not None]
    return ", ".join([_type_name(info.annotation), *bounds])


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{json.dumps(value)}`"


if __name__ == "__main__":
    sys.stdout.write(reference())
