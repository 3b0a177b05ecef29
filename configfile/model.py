"""The base of every config-file schema and the markers its fields use."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, model_validator

__all__ = ["ConfigModel", "Secret", "Text", "marked_secret", "models_in", "secret_paths"]


class Secret:
    """Field marker (``Annotated[str, Secret()]``): the value is never shown in an error."""


def _number_as_text(value: Any) -> Any:
    # YAML reads ``password: 1234`` or ``client_id: 2024`` as a number; such a
    # value is meant as text. A bool is not (``true`` is no name).
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


# A string that a YAML number may also spell (names, ids, passwords).
Text = Annotated[str, BeforeValidator(_number_as_text)]


class ConfigModel(BaseModel):
    """A section of a config file: unknown keys refused, no type coercion
    (``"5"`` is no integer), immutable once loaded, ``key: null`` = the default."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        # ``limits:`` with nothing after it is YAML null; the old loaders read
        # it (and any ``key: ~``) as "use the default", and so do we.
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data


def secret_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Key paths (list indices left out) of the fields marked :class:`Secret`."""
    found: set[tuple[str, ...]] = set()
    for name, info in model.model_fields.items():
        path = (*prefix, name)
        if marked_secret(info.metadata, info.annotation):
            found.add(path)
        for sub in models_in(info.annotation):
            if sub is not model:
                found |= secret_paths(sub, path)
    return found


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The ConfigModel classes an annotation names (``X``, ``X | None``, ``list[X]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()):
        out.extend(models_in(arg))
    return out


def marked_secret(metadata: list[Any], annotation: Any) -> bool:
    """Whether a field carries :class:`Secret`, also inside ``Annotated[...] | None``."""
    if any(isinstance(meta, Secret) for meta in metadata):
        return True
    return any(marked_secret(list(getattr(arg, "__metadata__", ())), arg)
               for arg in getattr(annotation, "__args__", ()))
