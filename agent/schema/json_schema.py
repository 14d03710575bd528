"""A model as JSON Schema (draft-07): what ``ssc-agent schema`` prints for editors.

Editors that complete and check TOML against a JSON Schema (Taplo, the "Even Better TOML"
extension) then know every key, its type, range, pattern, choices, default and what it is
for. The schema says what a key may hold on its own; rules across keys and tables (a device's
``bus`` must name a ``[[buses]]`` table, a KPI's keys per operator) stay ``validate``'s.
"""

from __future__ import annotations

import types
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

from agent.schema.fields import MISSING, FieldInfo, Parsed
from agent.schema.model import ConfigModel

DRAFT = "http://json-schema.org/draft-07/schema#"

_SCALARS: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    bool: {"type": "boolean"},
    int: {"type": "integer"},
    float: {"type": "number"},
    Path: {"type": "string"},
    Any: {},
}


# What a parsed string holds, for the editor's hover text.
_PARSED_WORDS = {
    "Duration": "a duration with its unit (ms, s, min, h, d), e.g. '15 s'",
    "KpiLength": "a whole number and a unit (s, min, h; 1 d, 1 mo, 1 y), e.g. '15 min'",
    "Size": "a size with its unit (B, KB, KiB, MB, MiB, GB, GiB), e.g. '256 MiB'",
}


def definition_name(model: type) -> str:
    """The key of ``model``'s schema under ``definitions`` (its module and name)."""
    return f"{model.__module__}.{model.__qualname__}"


class SchemaWriter:
    """Writes models into one schema, each model once under ``definitions``."""

    def __init__(self) -> None:
        self.definitions: dict[str, dict[str, Any]] = {}

    def ref(self, model: type[ConfigModel], *, extra: dict[str, Any] | None = None) -> Any:
        """A reference to ``model``'s definition (written on first use), with ``extra`` as in
        :meth:`model`."""
        name = definition_name(model)
        if name not in self.definitions:
            self.definitions[name] = {}  # a model that holds itself ends here
            self.definitions[name] = self.model(model, extra=extra)
        return {"$ref": f"#/definitions/{name}"}

    def model(self, model: type[ConfigModel], *, extra: dict[str, Any] | None = None,
              skip: tuple[str, ...] = ()) -> dict[str, Any]:
        """``model`` as an object schema: its keys, which are required, nothing else.

        ``extra``: schemas that stand for keys' own (e.g. a driver's name as the only
        ``driver`` value); ``skip``: keys left out."""
        hints = get_type_hints(model, include_extras=True)
        properties: dict[str, Any] = {}
        required: list[str] = []
        for name, info in model.model_fields.items():
            if name in skip:
                continue
            given = (extra or {}).get(name)
            prop = dict(given) if given is not None else self.value(hints[name], info)
            if info.description:
                prop["description"] = info.description
            if info.default is not MISSING and info.default is not None:
                prop["default"] = _json(info.default)
            properties[name] = prop
            if info.is_required:
                required.append(name)
        out: dict[str, Any] = {"type": "object", "properties": properties,
                               "additionalProperties": False}
        if required:
            out["required"] = required
        doc = (model.__doc__ or "").strip().split("\n\n")[0]
        if doc:
            out["description"] = " ".join(doc.split())
        return out

    def value(self, annotation: Any, info: FieldInfo) -> dict[str, Any]:
        """The schema of one key's values."""
        origin, args = get_origin(annotation), get_args(annotation)
        if origin is Annotated:
            base, *meta = args
            parsed = next((m for m in meta if isinstance(m, Parsed)), None)
            for item in meta:
                if isinstance(item, FieldInfo):
                    info = item.merged(info)
            if parsed is not None:
                words = _PARSED_WORDS.get(parsed.kind.__name__, "text")
                return {"type": "string", "description": words}
            return self.value(base, info)
        if origin in (Union, types.UnionType):
            members = [a for a in args if a is not type(None)]  # TOML has no null: leave it out
            if set(members) == {int, float}:
                return _bounded({"type": "number"}, info)
            if len(members) == 1:
                return self.value(members[0], info)
            return {"anyOf": [self.value(m, info) for m in members]}
        if origin is Literal:
            return {"enum": list(args)}
        if origin is list:
            return _sized({"type": "array", "items": self.value(args[0], FieldInfo())}, info)
        if origin is tuple:
            return {"type": "array", "items": [self.value(a, FieldInfo()) for a in args],
                    "minItems": len(args), "maxItems": len(args)}
        if isinstance(annotation, type) and issubclass(annotation, Enum):
            return {"enum": [member.value for member in annotation]}
        if isinstance(annotation, type) and issubclass(annotation, ConfigModel):
            return dict(self.ref(annotation))
        if annotation in _SCALARS:
            return _bounded(dict(_SCALARS[annotation]), info)
        return {}


def _bounded(out: dict[str, Any], info: FieldInfo) -> dict[str, Any]:
    """Numbers' bounds and strings' lengths and pattern from ``info``."""
    if out.get("type") in ("integer", "number"):
        for key, bound in (("minimum", info.ge), ("exclusiveMinimum", info.gt),
                           ("maximum", info.le), ("exclusiveMaximum", info.lt)):
            if bound is not None:
                out[key] = bound
    elif out.get("type") == "string":
        for key, length in (("minLength", info.min_length), ("maxLength", info.max_length)):
            if length is not None:
                out[key] = length
        if info.pattern is not None:
            out["pattern"] = info.pattern
    return out


def _sized(out: dict[str, Any], info: FieldInfo) -> dict[str, Any]:
    for key, bound in (("minItems", info.min_length), ("maxItems", info.max_length)):
        if bound is not None:
            out[key] = bound
    return out


def _json(value: Any) -> Any:
    """A default as the config would write it."""
    if isinstance(value, ConfigModel):
        return value.model_dump(mode="json")
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    text = getattr(value, "text", None)  # a Duration, Size or KPI length: as written
    if isinstance(text, str):
        return text
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    return value
