"""Settings files (YAML, TOML or JSON) and validation of typed settings, for every command and job."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a .yaml/.yml, .toml or .json file, as a dict (validated later with the flags)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".toml", ".json"):
        raise ValueError(f"config file {str(path)!r} must end in .yaml, .yml, .toml or .json")
    text = path.read_text()
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text) or {}
    except (ValueError, yaml.YAMLError) as err:  # json and toml errors are ValueErrors
        raise ValueError(f"config file {str(path)!r} does not parse: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping of settings, got {type(data).__name__}")
    return data


def validated(cls: type[M], data: dict[str, Any], what: str) -> M:
    """``cls(**data)``, with pydantic's complaints turned into one ``ValueError`` naming each setting."""
    try:
        return cls(**data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in err.errors())
        raise ValueError(f"invalid {what} settings: {problems}") from err
