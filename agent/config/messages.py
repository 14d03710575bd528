"""How a config problem is worded: one line per problem, naming its place
(``devices[2] (name=meter-1, driver=modbus) → points[4].type: …``), never echoing a secret's
value. The words of each problem come from the models (:mod:`agent.schema`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from agent.errors import excerpt
from agent.schema import ConfigModel, ValidationError, render_loc

# Keys whose values must never be echoed in an error line.
_SECRET_WORDS = ("password", "secret", "key", "token")
_M = TypeVar("_M", bound=ConfigModel)

_Loc = tuple[str | int, ...]


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
        path = render_loc(loc)
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
                if error.loc not in located:
                    self.add(error.loc, _redact(error.message, error.loc, error.value))
            return None


def _header(**parts: object) -> str:
    shown = [f"{key}={excerpt(value)}" for key, value in parts.items() if isinstance(value, str)]
    return f" ({', '.join(shown)})" if shown else ""

