"""Typed configs: every config is a pydantic model that rejects unknown keys.

A YAML config may start from another one: `extends: other.yaml` (a path relative to the file that
says it) loads that file first, then applies this file's keys on top. Mappings merge key by key,
recursively; every other value, lists included, replaces the inherited one whole (a `methods:`
list in the child is the child's complete method list). Chains are allowed; a cycle is an error.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import UserError

T = TypeVar("T", bound="StrictConfig")

EXTENDS = "extends"


class StrictConfig(BaseModel):
    """Base for all configs: unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def digest(self) -> str:
        """sha256 (hex) of the config's JSON with sorted keys: equal configs, equal digests, in any process."""
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_file(cls: type[T], path: str | Path) -> T:
        return cls.model_validate(read_config_file(path))


def read_config_file(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """The mapping a YAML config file describes, with its `extends:` chain resolved."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    if path.resolve() in _seen:
        chain = " → ".join(str(p) for p in (*_seen, path.resolve()))
        raise UserError(f"config files extend each other in a cycle: {chain}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    parent = data.pop(EXTENDS, None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise UserError(f"config file {path}: `{EXTENDS}` must be one file path, got {parent!r}")
    return _merge(read_config_file(path.parent / parent, (*_seen, path.resolve())), data)


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def describe_validation_error(err: ValidationError) -> str:
    """One line for a config's validation error: each bad field, what is wrong, what was given
    and, for an unknown key, the fields there are (pydantic's own text spans lines and a URL)."""
    config = _config_class(err.title)
    parts = []
    for e in err.errors(include_url=False):
        where = ".".join(str(x) for x in e["loc"]) or "config"
        if e["type"] == "missing":
            parts.append(f"`{where}` is required")
        elif e["type"] == "extra_forbidden":
            known = _fields_at(config, e["loc"][:-1])
            parts.append(f"`{where}` is not a setting" + (f" (settings: {', '.join(known)})" if known else ""))
        else:
            msg = e["msg"].removeprefix("Value error, ")
            parts.append(f"`{where}`: {msg[0].lower() + msg[1:]} (got {e['input']!r})")
    return f"invalid {err.title}: " + "; ".join(parts)


def _config_class(name: str) -> type[BaseModel] | None:
    todo = [StrictConfig]
    while todo:
        cls = todo.pop()
        if cls.__name__ == name:
            return cls
        todo.extend(cls.__subclasses__())
    return None


def _fields_at(config: type[BaseModel] | None, loc: tuple) -> list[str]:
    """Field names of the (nested) config at `loc`, following nested configs by field name."""
    for key in loc:
        if config is None or not isinstance(key, str) or key not in config.model_fields:
            return []
        annotation = config.model_fields[key].annotation
        config = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return sorted(config.model_fields) if config is not None else []
