"""Config files: TOML parsed once into pydantic models, errors that name the file and the field.

Each area defines its own models (site config in ``lsemvae.site``, model config in
``lsemvae.model.config``...); this module gives them one loader and one error type.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from lsemvae.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for config models: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def describe_validation_error(err: ValidationError, *, source: str) -> str:
    """One line per problem: ``file: field.path: what is wrong (got value)``."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<top level>"
        got = e.get("input")
        shown = "" if e["type"] == "missing" else f" (got {got!r})"
        lines.append(f"{source}: {loc}: {e['msg']}{shown}")
    return "\n".join(lines)


def validate(model: type[M], data: dict[str, Any], *, source: str) -> M:
    """Validate ``data`` against ``model``; raise :class:`ConfigError` naming ``source`` and each field."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, source=source)) from None


def load_toml(path: str | Path, model: type[M]) -> M:
    """Read a TOML file into ``model``. Missing file, bad TOML and bad fields each get a clear message."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err}") from None
    return validate(model, data, source=str(path))
