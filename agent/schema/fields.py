"""Declaring a config model's keys: :func:`Field` (default and constraints), the validator
markers and decorators, and the error types every check reports with."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, NamedTuple, TypeVar

Loc = tuple[str | int, ...]


class ErrorDetails(NamedTuple):
    """One problem: where (``("points", 4, "type")``), what, and the value found there."""

    loc: Loc
    message: str
    value: object


def render_loc(loc: Sequence[str | int]) -> str:
    """``("points", 4, "type")`` as ``points[4].type``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


class ValidationError(ValueError):
    """Every problem found in one :meth:`ConfigModel.model_validate`."""

    def __init__(self, title: str, errors: list[ErrorDetails]) -> None:
        self.title = title
        self._errors = errors
        lines = "; ".join(
            f"{render_loc(e.loc)}: {e.message}" if e.loc else e.message for e in errors
        )
        super().__init__(f"{title}: {lines}")

    def errors(self) -> list[ErrorDetails]:
        return list(self._errors)


# --------------------------------------------------------------------------------------------
# Declaring keys


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


@dataclass(slots=True, eq=False)  # eq=False: hashable, as Annotated[...] metadata must be
class FieldInfo:
    """A key's default and constraints; ``annotation`` is its type without ``Annotated``."""

    default: Any = MISSING
    default_factory: Callable[[], Any] | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    description: str = ""
    validate_default: bool = False
    annotation: Any = None

    @property
    def is_required(self) -> bool:
        return self.default is MISSING and self.default_factory is None

    def merged(self, other: FieldInfo) -> FieldInfo:
        """This info with what ``other`` sets on top."""
        out = FieldInfo()
        for name in (f.name for f in fields(FieldInfo)):
            mine, theirs = getattr(self, name), getattr(other, name)
            unset = theirs is None or theirs is MISSING or theirs is False or theirs == ""
            setattr(out, name, mine if unset else theirs)
        return out


def Field(default: Any = MISSING, **given: Any) -> Any:
    """A key's default and constraints, as its class attribute or in ``Annotated[...]``;
    ``Field`` reads as the key's declaration, hence the capital."""
    return FieldInfo(default, **given)


@dataclass(frozen=True, slots=True)
class BeforeValidator:
    """``func(value)`` or ``func(value, info)`` before the type check; ValueError refuses."""

    func: Callable[..., Any]


@dataclass(frozen=True, slots=True)
class AfterValidator:
    """``func(value)`` or ``func(value, info)`` on the checked value; ValueError refuses."""

    func: Callable[..., Any]


@dataclass(frozen=True, slots=True)
class Parsed:
    """A string parsed once by ``parse`` into a ``kind``; dumped, it is ``text(value)`` again.

    An instance of ``kind`` passes as it is (a default, a copied model). ``wrong_type`` words a
    value that is not a string (default: "must be a string").
    """

    kind: type
    parse: Callable[[str], Any]
    text: Callable[[Any], str]
    wrong_type: str | None = None


_F = TypeVar("_F")


class _Hook:
    def __init__(self, kind: str, names: tuple[str, ...], method: Any) -> None:
        self.kind = kind  # "field", "before" or "after"
        self.names = names
        self.method = method


def field_validator(
    *names: str, mode: Literal["before", "after"] = "after"
) -> Callable[[_F], _F]:
    """A classmethod ``(cls, value[, info])`` run on the named keys after their type checks
    (``before``: on the value as written, before them)."""

    def mark(method: _F) -> _F:
        hook: Any = _Hook("field" if mode == "after" else "field_before", names, method)
        return hook  # type: ignore[no-any-return]

    return mark


def model_validator(*, mode: Literal["before", "after"]) -> Callable[[_F], _F]:
    """``after``: a method ``(self[, info])`` run once every key is valid, returning self;
    ``before``: a classmethod ``(cls, data)`` returning the table to check."""

    def mark(method: _F) -> _F:
        hook: Any = _Hook(mode, (), method)
        return hook  # type: ignore[no-any-return]

    return mark


class ValidationInfo:
    """What a validator may look at: keys of its table checked so far, the caller's context."""

    __slots__ = ("context", "data", "errors")

    def __init__(self, context: Any, errors: list[ErrorDetails]) -> None:
        self.context = context
        self.data: dict[str, Any] = {}
        self.errors = errors

    def nested(self) -> ValidationInfo:
        return ValidationInfo(self.context, self.errors)

    def fail(self, loc: Loc, message: str, value: object) -> Any:
        self.errors.append(ErrorDetails(loc, message, value))
        return _INVALID


_INVALID: Any = object()
