"""Config models: a class per table, its keys as annotated attributes, checked on the way in.

The agent's config and every driver's device table are :class:`ConfigModel` subclasses. The
project used pydantic for this; its import and the models it builds cost a gateway ~14 MiB of
resident memory, about a third of the agent, for checking a file once at start-up. This module
does what the config needs and no more, with the same shape (``model_validate``, ``Field``,
``field_validator``, ``model_validator``), so a driver's model reads as it did:

- every key is checked against its annotation, strictly: a string is not a number, a number
  is not a string, ``true`` is not 1, and no float is NaN or infinite;
- unknown keys are refused; instances are frozen;
- every problem of a table is collected, each with its place (``points[4].type``) and words
  for people (``must be one of u16, i16, …``), raised together as :class:`ValidationError`.

Supported annotations: ``str``, ``int``, ``float``, ``bool``, ``Path``, ``Literal[...]``,
string enums, ``X | None``, ``list[X]``, ``tuple[X, Y]``, nested models, and ``Annotated[X,
…]`` with :func:`Field` constraints, :class:`BeforeValidator`, :class:`AfterValidator` and
:class:`Parsed` (a string parsed once into a value that dumps back to its text).
"""

from agent.schema.fields import (
    AfterValidator,
    BeforeValidator,
    ErrorDetails,
    Field,
    FieldInfo,
    Parsed,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
    render_loc,
)
from agent.schema.model import ConfigModel

__all__ = [
    "AfterValidator",
    "BeforeValidator",
    "ConfigModel",
    "ErrorDetails",
    "Field",
    "FieldInfo",
    "Parsed",
    "ValidationError",
    "ValidationInfo",
    "field_validator",
    "model_validator",
    "render_loc",
]
