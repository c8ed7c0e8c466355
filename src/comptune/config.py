"""Typed configs: every config is a pydantic model that rejects unknown keys.

A YAML config may start from another one: `extends: other.yaml` (a path relative to the file that
says it) loads that file first, then applies this file's keys on top. Mappings merge key by key,
recursively; every other value, lists included, replaces the inherited one whole (a `methods:`
list in the child is the child's complete method list). Chains are allowed; a cycle is an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict

T = TypeVar("T", bound="StrictConfig")

EXTENDS = "extends"


class StrictConfig(BaseModel):
    """Base for all configs: unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

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
        raise ValueError(f"config files extend each other in a cycle: {chain}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    parent = data.pop(EXTENDS, None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ValueError(f"config file {path}: `{EXTENDS}` must be one file path, got {parent!r}")
    return _merge(read_config_file(path.parent / parent, (*_seen, path.resolve())), data)


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
