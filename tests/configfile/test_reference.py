"""docs/config.md is the generated reference of every config key, in step with the code."""

from __future__ import annotations

import importlib
from pathlib import Path

from pydantic import BaseModel

from configfile import models_in
from configfile.reference import CONFIG_FILES, reference

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def _sections(model: type[BaseModel], path: str = "") -> list[tuple[str, type[BaseModel]]]:
    """(key path, section model) of ``model`` and every section under it."""
    out = [(path, model)]
    for key, info in model.model_fields.items():
        for sub in models_in(info.annotation):
            out += _sections(sub, f"{path}.{key}" if path else key)
    return out


def test_config_reference_is_generated_from_the_schemas() -> None:
    """docs/config.md is exactly what `python -m configfile.reference` writes."""
    assert DOC.read_text() == reference(), "regenerate: python -m configfile.reference > docs/config.md"


def test_config_reference_lists_every_key_with_a_meaning() -> None:
    """Every field of every config file has a row with a description in docs/config.md."""
    text = DOC.read_text()
    for _title, target in CONFIG_FILES:
        module, _, name = target.partition(":")
        model = getattr(importlib.import_module(module), name)
        for path, section in _sections(model):
            assert not path or f"### `{path}`" in text or f"### `{path}[]`" in text, path
            for key, info in section.model_fields.items():
                assert f"| `{key}` |" in text, (path, key)
                assert info.description, f"{path}.{key} has no description"
