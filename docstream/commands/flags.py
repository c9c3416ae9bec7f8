"""Flags built from pydantic settings classes: one place for each setting's choices, default and help.

:func:`add_fields` turns fields into flags: ``batch_size`` becomes ``--batch-size``, a ``Literal`` gives
the choices, the field's description is the help, the field's default is shown in it. Every flag's
argparse default is None, meaning "not given": :func:`given` collects the flags that were given and the
settings class fills in the rest, so a default lives only in the class (or a settings file in between).
"""
from __future__ import annotations

import argparse
import types
from pathlib import Path
from typing import Any, Iterable, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

__all__ = ["add_fields", "add_quiet", "add_run_folder", "given"]


def add_fields(parser: argparse.ArgumentParser, config: type[BaseModel], names: Iterable[str], *,
               defaults: BaseModel | None = None, flags: dict[str, str] | None = None,
               options: dict[str, dict[str, Any]] | None = None) -> None:
    """Add one flag per field ``names`` of ``config`` (``dest`` is the field name).

    ``defaults``: an instance whose values are shown as the defaults (the command starts from it);
    ``flags``: flag spellings other than ``--field-name``; ``options``: argparse keywords that replace the
    generated ones for a field (``{"lengths": {"type": str}}`` when the command parses the text itself).
    """
    for name in names:
        field = config.model_fields[name]
        if not field.description:
            raise ValueError(f"{config.__name__}.{name} has no description; give it Field(description=...), "
                             f"the help of its flag")
        default = getattr(defaults, name) if defaults is not None else _default(field)
        kwargs = _kind(field.annotation, default)
        shown = "" if default is None or isinstance(default, bool) else f" (default: {_show(default)})"
        kwargs["help"] = (field.description + shown).replace("%", "%%")
        kwargs.update((options or {}).get(name, {}))
        negated = kwargs.get("const") is False
        flag = (flags or {}).get(name) or ("--no-" if negated else "--") + name.replace("_", "-")
        parser.add_argument(flag, dest=name, default=None, **kwargs)


def given(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The flags among ``names`` that were given on the command line (not None), by field name."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def add_run_folder(parser: argparse.ArgumentParser) -> None:
    """``--run OUT``: the output folder of a ``docstream run`` that the command reads (``args.out``)."""
    parser.add_argument("--run", dest="out", required=True, metavar="OUT", help="output folder of a run")


def add_quiet(parser: argparse.ArgumentParser, what: str = "no progress bar") -> None:
    """``--quiet``: the same flag on every command that shows progress (``args.quiet``: True or None)."""
    parser.add_argument("--quiet", action="store_const", const=True, default=None, help=what)


def _default(field: FieldInfo) -> Any:
    if field.is_required():
        return None
    return field.get_default(call_default_factory=True)


def _kind(annotation: Any, default: Any) -> dict[str, Any]:
    """argparse keywords for a field of type ``annotation``."""
    annotation = _strip_none(annotation)
    origin = get_origin(annotation)
    if origin is Literal:
        choices = get_args(annotation)
        return {"choices": choices, "type": type(choices[0])}
    if annotation is bool:
        return {"action": "store_const", "const": not default}
    if origin in (list, tuple):
        item = get_args(annotation)[0]
        return {"nargs": "+", "type": _scalar(item)}
    return {"type": _scalar(annotation)}


def _strip_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [a for a in get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def _scalar(annotation: Any) -> type:
    if annotation in (int, float, str):
        return annotation
    if annotation is Path:
        return str  # the settings class turns it into a Path
    raise TypeError(f"no flag type for a field of type {annotation!r}")


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_show(v) for v in value) or "none"
    if isinstance(value, float) and value == int(value):
        return str(int(value))  # 100, not 100.0
    return str(value)
