"""The base of every config model: its keys read from the class's annotations, checked by
:meth:`ConfigModel.model_validate`, frozen, dumped back to a table."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import (
    Annotated,
    Any,
    ClassVar,
    Literal,
    NamedTuple,
    Self,
    dataclass_transform,
    get_args,
    get_origin,
    get_type_hints,
)

from agent.schema.checks import Hook, _calls, _compile, _Type, hooked
from agent.schema.fields import (
    _INVALID,
    MISSING,
    ErrorDetails,
    Field,
    FieldInfo,
    Loc,
    ValidationError,
    ValidationInfo,
    _Hook,
)


class _Key(NamedTuple):
    info: FieldInfo
    checker: _Type  # the type, its constraints and every validator of the key


class _Schema(NamedTuple):
    keys: dict[str, _Key]
    before: list[Callable[[Any], Any]]
    after: list[Callable[[Any, ValidationInfo], Any]]
    known: str  # "a, b, c" for the unknown-key message


class _ModelMeta(type):
    @property
    def model_fields(cls) -> dict[str, FieldInfo]:
        """Every key, in declaration order (a base class's first)."""
        return {name: key.info for name, key in _schema(cls).keys.items()}


def _schema(cls: Any) -> _Schema:
    found = cls.__dict__.get("_schema_")
    if found is None:
        found = _build_schema(cls)
        cls._schema_ = found
    return found  # type: ignore[no-any-return]


def _hooks(cls: type) -> list[tuple[str, _Hook]]:
    found: list[tuple[str, _Hook]] = []
    for klass in reversed(cls.__mro__):
        found += klass.__dict__.get("_hooks_", [])
    return found


def _bound(method: Any, cls: type) -> Any:
    return method.__get__(None, cls) if hasattr(method, "__get__") else method


def _build_schema(cls: type) -> _Schema:
    hints = get_type_hints(cls, include_extras=True)
    hooks = _hooks(cls)
    keys: dict[str, _Key] = {}
    for name, hint in hints.items():
        if name.startswith("_") or get_origin(hint) is ClassVar:
            continue
        declared = next((k.__dict__[name] for k in cls.__mro__ if name in k.__dict__), MISSING)
        info = declared if isinstance(declared, FieldInfo) else FieldInfo(declared)
        base = hint
        if get_origin(hint) is Annotated:
            base = get_args(hint)[0]
            for item in get_args(hint)[1:]:
                if isinstance(item, FieldInfo):
                    info = item.merged(info)
        info.annotation = base
        def field_hooks(kind: str, name: str = name) -> list[Hook]:
            return [_field_call(hook.method, cls) for _, hook in hooks
                    if hook.kind == kind and name in hook.names]

        checker = hooked(_compile(hint, info, cls), field_hooks("field_before"),
                         field_hooks("field"))
        keys[name] = _Key(info, checker)
    before = [_bound(hook.method, cls) for _, hook in hooks if hook.kind == "before"]
    after = [_calls(hook.method) for _, hook in hooks if hook.kind == "after"]
    return _Schema(keys, before, after, ", ".join(keys))


def _field_call(method: Any, cls: type) -> Hook:
    """A ``field_validator`` classmethod as a hook ``(value, info)`` bound to ``cls``."""
    return _calls(method.__get__(None, cls))


@dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(Field,))
class ConfigModel(metaclass=_ModelMeta):
    """A config table. Subclass it with annotated keys; build it with :meth:`model_validate`."""

    __slots__ = ("__dict__", "_given")
    _given: frozenset[str]
    # A float key refuses NaN and ±inf unless its model says otherwise.
    allow_inf_nan: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        hooks = [(name, v) for name, v in cls.__dict__.items() if isinstance(v, _Hook)]
        for name, hook in hooks:
            setattr(cls, name, hook.method)
        cls._hooks_ = hooks  # type: ignore[attr-defined]

    def __init__(self, **data: Any) -> None:
        built = type(self).model_validate(data)
        object.__setattr__(self, "_given", built._given)
        self.__dict__.update(built.__dict__)

    @classmethod
    def model_validate(cls, data: object, *, context: Any = None) -> Self:
        """The model of ``data`` (a table); :class:`ValidationError` lists every problem."""
        errors: list[ErrorDetails] = []
        built = cls._build(data, (), ValidationInfo(context, errors))
        if errors:
            raise ValidationError(cls.__name__, errors)
        return built  # type: ignore[no-any-return]

    @classmethod
    def _build(cls, data: object, loc: Loc, info: ValidationInfo) -> Any:
        schema = _schema(cls)
        try:
            for before in schema.before:
                data = before(data)
        except (ValueError, AssertionError) as exc:
            return info.fail(loc, str(exc), data)
        if not isinstance(data, Mapping):
            return info.fail(loc, "must be a table", data)
        start = len(info.errors)
        for name, key in schema.keys.items():
            where = (*loc, name)
            if name in data:
                value = key.checker.check(data[name], where, info)
            elif key.info.is_required:
                info.fail(where, "required", None)
                continue
            else:
                factory = key.info.default_factory
                value = factory() if factory is not None else key.info.default
                if key.info.validate_default:
                    value = key.checker.check(value, where, info)
                else:
                    info.data[name] = value
                    continue
            if value is not _INVALID:
                info.data[name] = value
        for name in data:
            if name not in schema.keys:
                info.fail((*loc, name), f"unknown key; known keys: {schema.known}", data[name])
        if len(info.errors) > start:
            return _INVALID
        built = cls.__new__(cls)
        built.__dict__.update(info.data)
        object.__setattr__(built, "_given", frozenset(n for n in data if n in schema.keys))
        try:
            for after in schema.after:
                after(built, info)
        except (ValueError, AssertionError) as exc:
            return info.fail(loc, str(exc), None)
        return built

    @property
    def model_fields_set(self) -> frozenset[str]:
        """The keys the table gave (not defaulted)."""
        return self._given

    def model_copy(self, *, update: Mapping[str, Any] | None = None) -> Self:
        """A copy with ``update``'s keys replaced, not checked again."""
        copy = type(self).__new__(type(self))
        copy.__dict__.update(self.__dict__)
        copy.__dict__.update(update or {})
        object.__setattr__(copy, "_given", self._given | frozenset(update or ()))
        return copy

    def model_dump(self, *, mode: Literal["python", "json"] = "python") -> dict[str, Any]:
        """The keys as a table: parsed values as their text; ``json``: only JSON types."""
        json = mode == "json"
        keys = _schema(type(self)).keys
        return {name: key.checker.dump(self.__dict__[name], json) for name, key in keys.items()}

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: {name} cannot be set")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: {name} cannot be deleted")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash((type(self), *self.__dict__.values()))

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in self.__dict__.items())
        return f"{type(self).__name__}({shown})"
