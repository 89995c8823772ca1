"""Typed values from outside JSON: a saved setting is of the type its dataclass field declares.

A run's config.json is outside input (it can be edited, damaged, or written by another
version). JSON has one number type and no Path, so the check is by the declared Python
type, read from the dataclass itself (`typing.get_type_hints`), never from a hand list:
a field added to `Request` is checked the day it is added. The rules are strict where
Python is lax: `True` is not an int (bool subclasses int), 2.0 is not an int (a float
for a count crashes later, far from the file), a string is not a list (iterating "abc"
gives a, b, c). An int is a float (JSON writes 1.0 as 1.0, but a person writes 1).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import PurePath
from typing import Any, Union, get_args, get_origin

from ipo_cli.errors import IpoError


def conforms(value: Any, kind: Any) -> bool:
    """Whether a JSON value (None, bool, int, float, str, list, dict) is of type `kind`
    (the annotations dataclasses use: int, float, bool, str, Path, X | None, list[X],
    tuple[X, Y], dict[K, V], Literal[...], Any)."""
    if kind is Any or kind is object:
        return True
    if kind is None or kind is type(None):
        return value is None
    origin = get_origin(kind)
    if origin is Union or origin is types.UnionType:
        return any(conforms(value, arg) for arg in get_args(kind))
    if origin is typing.Literal:
        return any(value == arg and type(value) is type(arg) for arg in get_args(kind))
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    if isinstance(kind, type) and issubclass(kind, PurePath):
        return isinstance(value, (str, PurePath))
    args = get_args(kind)
    if origin in (list, set, frozenset) or kind in (list, set, frozenset):
        return isinstance(value, list) and (not args or all(conforms(v, args[0]) for v in value))
    if origin is tuple or kind is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if not args:
            return True
        if len(args) == 2 and args[1] is Ellipsis:
            return all(conforms(v, args[0]) for v in value)
        return len(value) == len(args) and all(conforms(v, a) for v, a in zip(value, args))
    if origin is dict or kind is dict:
        return isinstance(value, dict) and (not args or all(
            conforms(k, args[0]) and conforms(v, args[1]) for k, v in value.items()))
    if isinstance(kind, type):
        return isinstance(value, kind)
    return False


def mismatch(value: Any, kind: Any, where: str = "") -> tuple[str, Any, Any] | None:
    """The first spot where `value` is not of `kind`: (where, the value there, the type
    wanted there), e.g. ('["train"][0][1]', 1.5, int); None when it conforms."""
    if conforms(value, kind):
        return None
    origin, args = get_origin(kind), get_args(kind)
    if origin is Union or origin is types.UnionType:
        shaped = [a for a in args if a is not type(None) and get_origin(a) in (list, dict, tuple)
                  and isinstance(value, dict if get_origin(a) is dict else list)]
        if len(shaped) == 1:
            return mismatch(value, shaped[0], where)
        return where, value, kind
    if origin in (list, set, frozenset) and isinstance(value, list) and args:
        for i, item in enumerate(value):
            found = mismatch(item, args[0], f"{where}[{i}]")
            if found:
                return found
    if origin is tuple and isinstance(value, (list, tuple)) and args and len(value) == len(args) \
            and args[-1] is not Ellipsis:
        for i, (item, arg) in enumerate(zip(value, args)):
            found = mismatch(item, arg, f"{where}[{i}]")
            if found:
                return found
    if origin is dict and isinstance(value, dict) and args:
        for key, item in value.items():
            if not conforms(key, args[0]):
                return f"{where} (a key)", key, args[0]
            found = mismatch(item, args[1], f"{where}[{json.dumps(key)[:40]}]")
            if found:
                return found
    return where, value, kind


def type_name(kind: Any) -> str:
    """The type as a person reads it: 'an integer', 'a list of texts', 'a path or nothing'."""
    if kind is type(None) or kind is None:
        return "nothing (null)"
    origin, args = get_origin(kind), get_args(kind)
    if origin is Union or origin is types.UnionType:
        names = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or nothing (null)" if type(None) in args else "")
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if kind is bool:
        return "true or false"
    if kind is int:
        return "a whole number"
    if kind is float:
        return "a number"
    if kind is str:
        return "a text"
    if isinstance(kind, type) and issubclass(kind, PurePath):
        return "a path (text)"
    if origin in (list, tuple, set, frozenset) or kind in (list, tuple):
        return "a list" + (f" of {type_name(args[0]).split(' ', 1)[-1]}s" if args and args[-1] is not Ellipsis
                           and len(args) == 1 else "")
    if origin is dict or kind is dict:
        return "an object"
    return f"a {getattr(kind, '__name__', str(kind))}"


def value_kind(value: Any) -> str:
    """What a JSON value is, for the message: 'the float 2.5', 'the text "abc"'."""
    names = {bool: "true/false", int: "the whole number", float: "the number", str: "the text",
             list: "a list", dict: "an object", type(None): "null"}
    name = names.get(type(value), f"a {type(value).__name__}")
    if isinstance(value, (list, dict)) or value is None:
        return name
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and abs(value) > 10**30:  # never format a huge number (4300-digit limit)
        return "a whole number of more than 30 digits"
    text = repr(value) if not isinstance(value, str) else repr(value[:40]) + ("..." if len(value) > 40 else "")
    return f"{name} {text}"


def field_types(cls: type) -> dict[str, Any]:
    """The evaluated type of each field of a dataclass (`from __future__ import annotations`
    leaves them as text; `get_type_hints` resolves them in the class's module)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def check_fields(data: dict, cls: type, source: str, hint: str | None = None, *,
                 prefix: str = "the setting") -> None:
    """Refuse the first value of `data` whose key is a field of dataclass `cls` and whose
    type is not the field's: one line naming the setting and `source` (the file)."""
    check_types(data, field_types(cls), source, hint, prefix=prefix)


def check_types(data: dict, kinds: dict[str, Any], source: str, hint: str | None = None, *,
                prefix: str = "the setting") -> None:
    """`check_fields` for a plain name -> type table (a file's top-level keys)."""
    for name, kind in kinds.items():
        found = mismatch(data[name], kind) if name in data else None
        if found:
            where, value, wanted = found
            raise IpoError(f"{source}: {prefix} {name!r}{where} is {value_kind(value)}, not {type_name(wanted)}",
                           hint or f"fix {name!r} in {source}, or start anew")


__all__ = ["check_fields", "check_types", "conforms", "field_types", "mismatch", "type_name", "value_kind"]
