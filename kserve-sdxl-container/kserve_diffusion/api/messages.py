"""400 messages: one pydantic error as '<field>: <what is wrong>, got <value>', values escaped and capped,
URL fields never echoed (pre-signed URLs hold credentials)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

SECRET_FIELDS = frozenset({"image_url", "mask_url"})  # never echoed: pre-signed URLs hold credentials


def shown(value: Any) -> str:
    """A client value for an error message: JSON-like, at most 80 characters."""
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None), list, dict)) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


JSON_TYPES = {
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    list: "a list",
    dict: "an object",
}


def type_name(value: Any) -> str:
    """What kind of JSON value a client sent, without its content (for fields that may hold secrets)."""
    if value is None:
        return "null"
    return JSON_TYPES.get(type(value), f"a {type(value).__name__} value")


class CompleteProblem(ValueError):
    """A validator's message that already shows the value it is about (the field name is added, nothing else)."""


_UNION_TAGS = ("str", "bytes")
_BOUND_WORDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))


def _range_text(name: str, model: type[BaseModel]) -> str:
    metadata = model.model_fields[name].metadata
    bounds = {attr: getattr(c, attr) for c in metadata for attr, _ in _BOUND_WORDS if hasattr(c, attr)}
    return " and ".join(f"{words} {bounds[attr]}" for attr, words in _BOUND_WORDS if attr in bounds)


def describe_error(error: dict[str, Any], model: type[BaseModel]) -> str:
    """One pydantic error of `model` as '<field>: <what is wrong>, got <value>'."""
    loc = error["loc"]
    kind = error["type"]
    value = error.get("input")
    if len(loc) == 2 and loc[1] in _UNION_TAGS:  # `str | bytes` fields: one message, not one per member
        loc = loc[:1]
        if kind in ("string_type", "bytes_type"):
            return f"{loc[0]}: must be a string, got {shown(value)}"
    field = ".".join(str(part) for part in loc) or "request"
    if len(field) > 64 or not field.isprintable():  # a client's made-up field name: escaped and capped
        field = shown(field)
    if kind == "extra_forbidden":
        return f"{field}: unknown field (allowed: {', '.join(model.model_fields)})"
    if kind == "missing":
        return f"{field}: required field is missing"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        problem = f"must be {_range_text(field, model)}"
    elif kind in ("string_too_short", "bytes_too_short", "too_short"):
        problem = "must not be empty"
    elif kind == "string_too_long":
        problem = f"must be at most {error['ctx']['max_length']} characters"
    elif kind == "value_error" and isinstance(error["ctx"]["error"], CompleteProblem):
        return f"{field}: {error['ctx']['error']}"
    elif kind == "value_error":
        problem = str(error["ctx"]["error"])
    elif kind == "literal_error":
        problem = f"must be one of {error['ctx']['expected']}"
    else:
        problem = error["msg"][0].lower() + error["msg"][1:]
    if kind == "string_too_long" and isinstance(value, str):
        return f"{field}: {problem}, got {len(value)} characters"
    if loc and loc[0] in SECRET_FIELDS:  # pre-signed URLs carry credentials: say what came, not what it says
        return f"{field}: {problem}, got {_kind_of(value)}"
    return f"{field}: {problem}, got {shown(value)}"


def _kind_of(value: Any) -> str:
    return "null" if value is None else f"a {type(value).__name__} (not shown: it may hold credentials)"


def quoted(value: Any) -> str:
    """A short, printable client string as Python writes it ('DDIM'); anything else as `shown` (escaped, capped)."""
    if isinstance(value, str) and len(value) <= 80 and value.isprintable():
        return repr(value)
    return shown(value)


def named(name: Any) -> str:
    """A client-chosen name (tensor, field) as it is when short and printable, else escaped and capped."""
    if isinstance(name, str) and 0 < len(name) <= 64 and name.isprintable():
        return name
    return shown(name)
