"""The command line's one argument style: ``key=value``, parsed with OmegaConf against a typed schema.

Every command of ``python -m sar_lightning`` takes its positional argument (a config file, a run folder, a
grid file) and then ``key=value`` pairs only. A key is a dotted path into the command's schema, a dataclass
(``infer.num_steps``, ``sample.per_class``, ``threads``); a value is YAML (``4``, ``[1,4]``, ``null``,
``true``). A list key also takes one value or a comma-separated list without brackets: ``infer.orders=raster``
is ``infer.orders=[raster]``, ``sweep.seeds=0,1,2`` is ``sweep.seeds=[0,1,2]``. An unknown key, a value of
the wrong type or a required key left out is a ``ConfigError`` naming the key (one line, exit 2).

``describe`` writes a schema's keys with their types, defaults and help (each field's ``# comment`` in its
class), so a command's ``--help`` is generated from the schema it parses with; ``flag_parser`` turns a flat
schema into ``--flag`` options for the scripts that keep them (``analysis/*.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from typing import Any

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from sar_lightning.config import ConfigError

AND = "--and"  # evaluate RUN a=1 --and b=2: one evaluation per group of overrides
THEN_EVALUATE = "--then-evaluate"  # train CONFIG ... --then-evaluate <evaluate overrides>: a local sweep's job


def _hints(schema: type) -> dict[str, Any]:
    return typing.get_type_hints(schema)


def _is_list(kind) -> bool:
    """``list[...]``, or a union holding one (``list[int] | None``)."""
    if typing.get_origin(kind) is list or kind is list:
        return True
    return typing.get_origin(kind) in (typing.Union, types.UnionType) and any(map(_is_list, typing.get_args(kind)))


def field_type(schema: type, key: str):
    """The annotation of the dotted ``key`` in ``schema``; ``KeyError`` when the schema has no such key."""
    kind: Any = schema
    for part in key.split("."):
        if not (dataclasses.is_dataclass(kind) and part in {f.name for f in dataclasses.fields(kind)}):
            raise KeyError(key)
        kind = _hints(kind)[part]
    return kind


def split_groups(args: list[str], separator: str = AND) -> list[list[str]]:
    """``a=1 --and b=2 c=3`` -> ``[["a=1"], ["b=2", "c=3"]]``."""
    groups: list[list[str]] = [[]]
    for arg in args:
        if arg == separator:
            groups.append([])
        else:
            groups[-1].append(arg)
    return groups


def pairs(schema: type, args: list[str], command: str) -> list[str]:
    """``args`` checked to be ``key=value`` with keys of ``schema``, a list key's bare value put in brackets
    (``infer.orders=raster`` -> ``infer.orders=[raster]``). Raises ``ConfigError`` naming the argument."""
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected key=value, got {arg!r}; `python -m sar_lightning {command} --help` lists "
                              "the keys")
        try:
            kind = field_type(schema, key)
        except KeyError:
            raise ConfigError(f"unknown key {key!r}; `python -m sar_lightning {command} --help` lists the "
                              "keys") from None
        if dataclasses.is_dataclass(kind):
            raise ConfigError(f"{key} is a section; give its keys, e.g. {dataclasses.fields(kind)[0].name}: "
                              f"{key}.{dataclasses.fields(kind)[0].name}=...")
        bare = value.strip()
        if _is_list(kind) and not bare:
            raise ConfigError(f"{key}= has no value: give a list such as {key}=[a,b] (or {key}=[] for none)")
        if _is_list(kind) and bare[0] != "[" and bare not in ("null", "~", "None"):
            arg = f"{key}=[{value}]"
        out.append(arg)
    return out


def parse(schema: type, args: list[str], command: str):
    """``key=value`` ``args`` merged onto ``schema``'s defaults -> an instance of ``schema`` (``ConfigError``
    naming the key for an unknown key, a bad value or a required key left out)."""
    dotlist = pairs(schema, args, command)
    try:
        tree = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_dotlist(dotlist))
        return OmegaConf.to_object(tree)
    except MissingMandatoryValue as err:
        key = err.full_key
        raise ConfigError(f"{key} is required: give {key}=..." if key else _first(err)) from None
    except ConfigKeyError as err:
        raise ConfigError(f"unknown key {err.full_key!r}: {_first(err)}") from None
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        raise ConfigError(f"bad value{f' at {key!r}' if key else ''}: {_first(err)}") from None


def _first(err: OmegaConfBaseException) -> str:
    """OmegaConf's message without the ``full_key: ... object_type=...`` lines it appends."""
    text = getattr(err, "msg", None) or str(err)
    return text.splitlines()[0] if text.strip() else type(err).__name__


# ---- the help, generated from the schema -------------------------------------------------------------------------


@dataclasses.dataclass
class Knob:
    key: str
    type: str
    default: str
    help: str


def _comments(schema: type) -> dict[str, str]:
    """Each field's help in the class source: its inline ``# comment``, else the comment lines just above it."""
    try:
        lines = inspect.getsource(schema).splitlines()[1:]
    except (OSError, TypeError):
        return {}
    names, out, above = {f.name for f in dataclasses.fields(schema)}, {}, []
    for line in lines:
        text = line.strip()
        if text.startswith("#"):
            above.append(text.lstrip("#").strip())
            continue
        match = re.match(r"\s+(\w+)\s*:[^#]*(?:#\s*(.*))?$", line)
        if match and match.group(1) in names:
            inline = (match.group(2) or "").strip()
            out[match.group(1)] = inline if inline and not inline.startswith("noqa") else " ".join(above)
        above = []
    return out


def _show(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_show, value)) + "]"
    if isinstance(value, str) and value == MISSING:
        return "(required)"
    return str(value) if value != "" else '""'


def _type_name(field: dataclasses.Field) -> str:
    kind = field.type
    return kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))


def knobs(schema: type, prefix: str = "") -> list[Knob]:
    """Every key of ``schema`` (nested sections included, as dotted keys) with its type, default and help."""
    out, comments, hints = [], _comments(schema), _hints(schema)
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            out += knobs(hints[f.name], f"{key}.")
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = MISSING
        out.append(Knob(key, _type_name(f), _show(default), comments.get(f.name, "")))
    return out


def describe(schema: type, skip: tuple[str, ...] = ()) -> str:
    """The keys of ``schema`` as aligned lines ``key  type  default  help`` (keys under a ``skip`` prefix left out)."""
    rows = [k for k in knobs(schema) if not any(k.key == s or k.key.startswith(f"{s}.") for s in skip)]
    if not rows:
        return "  (none)"
    width = [max(len(getattr(k, name)) for k in rows) for name in ("key", "type", "default")]
    lines = []
    for k in rows:
        line = f"  {k.key:<{width[0]}}  {k.type:<{width[1]}}  {k.default:<{width[2]}}  {k.help}"
        lines.append(line.rstrip())
    return "\n".join(lines)


# ---- --flags for the scripts that keep them ----------------------------------------------------------------------


def flag_parser(schema: type, prog: str, description: str) -> argparse.ArgumentParser:
    """An argparse parser with one ``--flag`` per field of the flat ``schema`` (``image_size`` -> ``--image-size``,
    a bool -> ``store_true``, a field without a default -> required); ``schema(**vars(parser.parse_args()))``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    comments, hints = _comments(schema), _hints(schema)
    for f in dataclasses.fields(schema):
        flag, kind, help_text = f"--{f.name.replace('_', '-')}", hints[f.name], comments.get(f.name) or None
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action="store_true", help=help_text)
            continue
        inner = [a for a in typing.get_args(kind) if a is not type(None)] or [kind]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING or f.default == MISSING
        default = None if required else f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = help_text if required else f"{help_text or ''} (default: {_show(default)})".strip()
        parser.add_argument(flag, dest=f.name, type=inner[0], default=default, required=required, help=shown)
    return parser
