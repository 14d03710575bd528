"""Checking one value against its annotation: each annotation is compiled once into a
:class:`_Type` (a check and a dump), which says what is wrong in words for people."""

from __future__ import annotations

import math
import re
import types
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple, Union, get_args, get_origin

from agent.schema.fields import (
    _INVALID,
    AfterValidator,
    BeforeValidator,
    ErrorDetails,
    FieldInfo,
    Loc,
    Parsed,
    ValidationInfo,
)

if TYPE_CHECKING:
    from agent.schema.model import ConfigModel

class _Type(NamedTuple):
    check: Callable[[object, Loc, ValidationInfo], Any]
    dump: Callable[[Any, bool], Any]  # (value, json)


def _same(value: Any, json: bool) -> Any:
    return value


def _number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


_PATTERN_WORDS = {
    r"^[A-Za-z0-9_-]+$": "use only letters, digits, '_' and '-' (at least one)",
    r"^[A-Za-z0-9_]+$": "use only letters, digits and '_' (at least one)",
    r"^[a-z0-9_]+$": "use only lowercase letters, digits and '_' (at least one)",
}


def _bound_problem(value: float, c: FieldInfo) -> str | None:
    if c.gt is not None and not value > c.gt:
        return f"must be greater than {_number(c.gt)}"
    if c.ge is not None and not value >= c.ge:
        return f"must be at least {_number(c.ge)}"
    if c.lt is not None and not value < c.lt:
        return f"must be less than {_number(c.lt)}"
    if c.le is not None and not value <= c.le:
        return f"must be at most {_number(c.le)}"
    return None


def _text_problem(value: str, c: FieldInfo) -> str | None:
    if c.min_length is not None and len(value) < c.min_length:
        if c.min_length <= 1:
            return "must not be empty"
        return f"must be at least {c.min_length} characters"
    if c.max_length is not None and len(value) > c.max_length:
        return f"must be at most {c.max_length} characters"
    if c.pattern is not None and re.search(c.pattern, value) is None:
        return _PATTERN_WORDS.get(c.pattern, f"must match the pattern {c.pattern}")
    return None


def _items_problem(value: Sequence[object], c: FieldInfo) -> str | None:
    if c.min_length is not None and len(value) < c.min_length:
        word, bound = "at least", c.min_length
    elif c.max_length is not None and len(value) > c.max_length:
        word, bound = "at most", c.max_length
    else:
        return None
    return f"must have {word} {bound} item{'' if bound == 1 else 's'}"


def _scalar(
    accepts: Callable[[object], bool], wrong: str, problem: Callable[[Any], str | None]
) -> _Type:
    def check(value: object, loc: Loc, info: ValidationInfo) -> Any:
        if not accepts(value):
            return info.fail(loc, wrong, value)
        found = problem(value)
        return value if found is None else info.fail(loc, found, value)

    return _Type(check, _same)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number_type(is_int: bool, c: FieldInfo, owner: type, *, keep_int: bool = False) -> _Type:
    finite = not getattr(owner, "allow_inf_nan", False)

    def check(value: object, loc: Loc, info: ValidationInfo) -> Any:
        if not (_is_int(value) if is_int else _is_number(value)):
            return info.fail(loc, "must be an integer" if is_int else "must be a number", value)
        assert isinstance(value, int | float)
        if not is_int:
            if finite and not math.isfinite(value):
                return info.fail(loc, "must be a finite number", value)
            value = value if keep_int and isinstance(value, int) else float(value)
        found = _bound_problem(value, c)
        return value if found is None else info.fail(loc, found, value)

    return _Type(check, _same)


def _choices(options: Sequence[object], convert: Callable[[Any], Any], dump: Any) -> _Type:
    words = "must be one of " + ", ".join(str(getattr(o, "value", o)) for o in options)

    def check(value: object, loc: Loc, info: ValidationInfo) -> Any:
        for option in options:
            plain = getattr(option, "value", option)
            if value is option or (type(value) is type(plain) and value == plain):
                return convert(option)
        return info.fail(loc, words, value)

    return _Type(check, dump)


def _parsed_type(marker: Parsed) -> _Type:
    def check(value: object, loc: Loc, info: ValidationInfo) -> Any:
        if isinstance(value, marker.kind):
            return value
        if not isinstance(value, str):
            return info.fail(loc, marker.wrong_type or "must be a string", value)
        try:
            return marker.parse(value)
        except ValueError as exc:
            return info.fail(loc, str(exc), value)

    return _Type(check, lambda value, json: marker.text(value))


def _optional(inner: _Type) -> _Type:
    def check(value: object, loc: Loc, info: ValidationInfo) -> Any:
        return None if value is None else inner.check(value, loc, info)

    def dump(value: Any, json: bool) -> Any:
        return None if value is None else inner.dump(value, json)

    return _Type(check, dump)


def _first_of(members: list[_Type]) -> _Type:
    """A union: the first member the value passes; else the problems of the member it came
    closest to (the one whose problems lie deepest: a list of the wrong items rather than
    "must be a string")."""

    def check(value: object, loc: Loc, info: ValidationInfo) -> Any:
        tried: list[list[ErrorDetails]] = []
        for member in members:
            scratch = ValidationInfo(info.context, [])
            scratch.data = info.data
            out = member.check(value, loc, scratch)
            if not scratch.errors:
                return out
            tried.append(scratch.errors)
        closest = max(tried, key=lambda errors: max(len(e.loc) for e in errors))
        info.errors.extend(closest)
        return _INVALID

    def dump(value: Any, json: bool) -> Any:
        for member in members:
            scratch = ValidationInfo(None, [])
            member.check(value, (), scratch)
            if not scratch.errors:
                return member.dump(value, json)
        return value

    return _Type(check, dump)


def _sequence_problem(value: object, c: FieldInfo) -> str | None:
    """Why ``value`` is not a list of the length ``c`` allows, or None."""
    if not isinstance(value, list | tuple):
        return "must be a list"
    return _items_problem(value, c)


def _list_type(item: _Type, c: FieldInfo) -> _Type:
    def check(value: object, loc: Loc, info: ValidationInfo) -> Any:
        found = _sequence_problem(value, c)
        if found is not None:
            return info.fail(loc, found, value)
        assert isinstance(value, list | tuple)
        out = [item.check(v, (*loc, i), info) for i, v in enumerate(value)]
        return _INVALID if any(v is _INVALID for v in out) else out

    return _Type(check, lambda value, json: [item.dump(v, json) for v in value])


def _tuple_type(items: tuple[_Type, ...]) -> _Type:
    c = FieldInfo(min_length=len(items), max_length=len(items))

    def check(value: object, loc: Loc, info: ValidationInfo) -> Any:
        found = _sequence_problem(value, c)
        if found is not None:
            return info.fail(loc, found, value)
        assert isinstance(value, list | tuple)
        pairs = enumerate(zip(items, value, strict=True))
        out = tuple(t.check(v, (*loc, i), info) for i, (t, v) in pairs)
        return _INVALID if any(v is _INVALID for v in out) else out

    def dump(value: Any, json: bool) -> Any:
        out = [t.dump(v, json) for t, v in zip(items, value, strict=True)]
        return out if json else tuple(out)

    return _Type(check, dump)


def _model_type(model: type[ConfigModel]) -> _Type:
    def check(value: object, loc: Loc, info: ValidationInfo) -> Any:
        if isinstance(value, model):
            return value
        return model._build(value, loc, info.nested())

    return _Type(check, lambda value, json: value.model_dump(mode="json" if json else "python"))


def _base_type(annotation: Any, c: FieldInfo, owner: type) -> _Type:
    from agent.schema.model import ConfigModel  # the models import this module
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        others = [a for a in args if a is not type(None)]
        if set(args) == {int, float}:
            return _number_type(False, c, owner, keep_int=True)
        if len(others) == 1:
            return _optional(_compile(others[0], c, owner))
        either = _first_of([_compile(a, c, owner) for a in others])
        return _optional(either) if len(others) < len(args) else either
    if origin is Literal:
        return _choices(args, lambda option: option, _same)
    if origin is list:
        return _list_type(_compile(args[0], FieldInfo(), owner), c)
    if origin is tuple:
        return _tuple_type(tuple(_compile(a, FieldInfo(), owner) for a in args))
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        members = list(annotation)
        return _choices(members, lambda m: m, lambda m, json: m.value if json else m)
    if isinstance(annotation, type) and issubclass(annotation, ConfigModel):
        return _model_type(annotation)
    if annotation is str:
        return _scalar(
            lambda v: isinstance(v, str), "must be a string", lambda v: _text_problem(v, c)
        )
    if annotation is bool:
        return _scalar(lambda v: isinstance(v, bool), "must be true or false", lambda v: None)
    if annotation in (int, float):
        return _number_type(annotation is int, c, owner)
    if annotation is Path:
        return _Type(_check_path, lambda value, json: str(value) if json else value)
    if annotation is Any or annotation is object:
        return _Type(lambda value, loc, info: value, _same)
    raise TypeError(f"{owner.__name__}: unsupported annotation {annotation!r}")


def _check_path(value: object, loc: Loc, info: ValidationInfo) -> Any:
    if isinstance(value, Path):
        return value
    if isinstance(value, str):
        return Path(value)
    return info.fail(loc, "must be a path (a string)", value)


def _calls(func: Callable[..., Any]) -> Callable[[Any, ValidationInfo], Any]:
    """``func`` called as ``(value, info)`` whether it takes the info or not."""
    code = getattr(getattr(func, "__func__", func), "__code__", None)
    takes = code.co_argcount if code is not None else 1
    if hasattr(func, "__self__"):  # a bound method: its first argument is given already
        takes -= 1
    if takes >= 2:
        return func
    return lambda value, info: func(value)


def _compile(annotation: Any, c: FieldInfo, owner: type) -> _Type:
    """How to check and dump a value of ``annotation`` with the constraints ``c``."""
    if get_origin(annotation) is not Annotated:
        return _base_type(annotation, c, owner)
    base, *meta = get_args(annotation)
    befores: list[Hook] = []
    afters: list[Hook] = []
    parsed: Parsed | None = None
    for item in meta:
        if isinstance(item, FieldInfo):
            c = item.merged(c)
        elif isinstance(item, BeforeValidator):
            befores.append(_calls(item.func))
        elif isinstance(item, AfterValidator):
            afters.append(_calls(item.func))
        elif isinstance(item, Parsed):
            parsed = item
    inner = _parsed_type(parsed) if parsed is not None else _base_type(base, c, owner)
    return hooked(inner, befores, afters)


Hook = Callable[[Any, ValidationInfo], Any]


def hooked(inner: _Type, befores: list[Hook], afters: list[Hook]) -> _Type:
    """``inner`` with ``befores`` run on the value as written and ``afters`` on the checked
    value, in order; a ValueError of any of them is the key's problem, reported once."""
    if not befores and not afters:
        return inner

    def check(value: object, loc: Loc, info: ValidationInfo) -> Any:
        original = value
        try:
            for before in befores:
                value = before(value, info)
            value = inner.check(value, loc, info)
            if value is _INVALID:
                return value
            for after in afters:
                value = after(value, info)
        except (ValueError, AssertionError) as exc:
            return info.fail(loc, str(exc), original)
        return value

    return _Type(check, inner.dump)
