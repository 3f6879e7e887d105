"""Numbers in schedules and params are numbers, never booleans.

Pydantic's lax mode turns ``true`` into ``1`` for an ``int`` or ``float`` field, so ``"seed": true`` or
``"weight": true`` would validate. :class:`NoBoolNumbers` is the base of every model a schedule is
validated with (schedule sections, component ``Params``, value schedules): a boolean given where the
field takes numbers but not booleans is an error. Other lax conversions (``3.0`` for an ``int``) stay.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, model_validator
from pydantic_core import PydanticCustomError


#: The Pydantic error type of a boolean given for a number; its context's ``keys`` names the fields.
BOOL_NOT_NUMBER = "bool_not_number"


def _leaf_types(annotation: Any) -> set[Any]:
    """The plain types an annotation admits, looking through unions, ``Annotated``, lists and tuples."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _leaf_types(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, list, tuple, set, frozenset):
        leaves: set[Any] = set()
        for argument in typing.get_args(annotation):
            if argument is not Ellipsis:
                leaves |= _leaf_types(argument)
        return leaves
    return {annotation}


def _wants_number_not_bool(annotation: Any) -> bool:
    leaves = _leaf_types(annotation)
    return bool(leaves & {int, float}) and not leaves & {bool, Any, object}


class NoBoolNumbers(BaseModel):
    """Refuses ``true``/``false`` for fields (or items of list and tuple fields) that take numbers."""

    @model_validator(mode="before")
    @classmethod
    def _refuse_bool_numbers(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        wrong = []
        for name, field in cls.model_fields.items():
            key = field.alias if field.alias is not None and field.alias in data else name
            value = data.get(key)
            items = value if isinstance(value, (list, tuple)) else (value,)
            if any(isinstance(item, bool) for item in items) and _wants_number_not_bool(field.annotation):
                wrong.append(key)
        if wrong:
            # format_validation_error reports each key at its own path: ``seed: must be a number...``.
            raise PydanticCustomError(
                BOOL_NOT_NUMBER, "{keys} must be a number, not true or false", {"keys": ", ".join(wrong)}
            )
        return data
