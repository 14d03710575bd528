"""How a config problem is worded: one line per problem, naming its place
(``devices[2] (name=meter-1, driver=modbus) → points[4].type: …``), in words for people
instead of pydantic's, and never echoing a secret's value.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, TypeVar, get_args

from pydantic import (
    BaseModel,
    ValidationError,
)
from pydantic_core import ErrorDetails

from agent.errors import excerpt

# Keys whose values must never be echoed in an error line.
_SECRET_WORDS = ("password", "secret", "key", "token")
_M = TypeVar("_M", bound=BaseModel)

_Loc = tuple[str | int, ...]


def _render_loc(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


_PATTERN_WORDS = {
    r"^[A-Za-z0-9_-]+$": "use only letters, digits, '_' and '-' (at least one)",
    r"^[A-Za-z0-9_]+$": "use only letters, digits and '_' (at least one)",
    r"^[a-z0-9_]+$": "use only lowercase letters, digits and '_' (at least one)",
}
_TYPE_WORDS = {
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "string_type": "must be a string",
    "string_sub_type": "must be a string",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "set_type": "must be a list",
    "dict_type": "must be a table",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
    "path_type": "must be a path (a string)",
    "missing": "required",
}


def _number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _model_at(model: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model class that holds the key at ``loc`` (for listing its known keys)."""
    current: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, int):
            continue
        if current is None or part not in current.model_fields:
            return None
        current = _inner_model(current.model_fields[part].annotation)
    return current


def _inner_model(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _choices(expected: str) -> str:
    return ", ".join(part.strip().strip("'") for part in re.split(r", | or ", expected))


def _humanize(error: ErrorDetails, model: type[BaseModel]) -> str:
    """One pydantic error as a message for people; never echoes a secret's value."""
    kind = error["type"]
    ctx = error.get("ctx", {})
    loc = error["loc"]
    if kind == "extra_forbidden":
        holder = _model_at(model, loc[:-1])
        known = ", ".join(holder.model_fields) if holder is not None else ""
        return f"unknown key; known keys: {known}" if known else "unknown key"
    if kind in ("literal_error", "enum"):
        return f"must be one of {_choices(str(ctx.get('expected', '')))}"
    if kind in _TYPE_WORDS:
        return _TYPE_WORDS[kind]
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        message = str(ctx["error"])
    elif kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        message = _PATTERN_WORDS.get(pattern, f"must match the pattern {pattern}")
    elif kind == "string_too_short":
        minimum = int(ctx.get("min_length", 1))
        message = "must not be empty" if minimum <= 1 else f"must be at least {minimum} characters"
    elif kind == "string_too_long":
        message = f"must be at most {ctx.get('max_length')} characters"
    elif kind in ("too_short", "too_long"):
        bound = int(ctx.get("min_length" if kind == "too_short" else "max_length", 0))
        word = "at least" if kind == "too_short" else "at most"
        message = f"must have {word} {bound} item{'' if bound == 1 else 's'}"
    elif kind in _BOUND_WORDS:
        word, ctx_key = _BOUND_WORDS[kind]
        message = f"must be {word} {_number(ctx.get(ctx_key))}"
    else:
        message = error["msg"]
    return _redact(message, loc, error.get("input"))


_BOUND_WORDS = {
    "greater_than": ("greater than", "gt"),
    "greater_than_equal": ("at least", "ge"),
    "less_than": ("less than", "lt"),
    "less_than_equal": ("at most", "le"),
}


def _redact(message: str, loc: Sequence[str | int], value: object) -> str:
    secret = any(word in str(part).lower() for part in loc for word in _SECRET_WORDS)
    if secret and isinstance(value, str) and value:
        message = message.replace(repr(value), "(hidden)").replace(value, "(hidden)")
    return message


class _Item:
    """The problems of one table or list item: ``where`` is how its lines start."""

    def __init__(self, where: str, *, listed: bool) -> None:
        self.where = where  # "gateway", "devices[2] (name=meter-1, driver=modbus)", or ""
        self.separator = " → " if listed else "."
        self.lines: list[str] = []
        self.located: set[_Loc] = set()

    def add(self, loc: Sequence[str | int], message: str) -> None:
        """One line; a key gets its first, clearest line only once from validation."""
        path = _render_loc(loc)
        if not path:
            self.lines.append(f"{self.where}: {message}")
        elif not self.where:
            self.lines.append(f"{path}: {message}")
        else:
            self.lines.append(f"{self.where}{self.separator}{path}: {message}")
        self.located.add(tuple(loc))

    def validate(self, model: type[_M], data: object, context: dict[str, Any]) -> _M | None:
        """The model, or None after adding a line per error (keys already located skipped)."""
        try:
            return model.model_validate(data, context=context)
        except ValidationError as exc:
            located = set(self.located)
            for error in exc.errors():
                if tuple(error["loc"]) not in located:
                    self.add(error["loc"], _humanize(error, model))
            return None


def _header(**parts: object) -> str:
    shown = [f"{key}={excerpt(value)}" for key, value in parts.items() if isinstance(value, str)]
    return f" ({', '.join(shown)})" if shown else ""

