"""The request body as a JSON schema under this server's limits, published in /openapi.json for the routes that
read their body themselves (job submission): clients see the real bounds, and `make fuzz` generates requests
that can pass, so its stateful phase gets real job ids to follow.

The pydantic model holds the static rules; the operator's limits (--max_steps, --max_side, ...) are applied
here as the schema's maxima, as `parse_request` applies them when it validates.
"""

from __future__ import annotations

import copy
from typing import Any

from .request import _SERVER_LIMITED, GenerationRequest, Limits

# Sides and their multiples (the strictest family's: FLUX needs 16, Wan 16; SDXL 8 is then met too).
_SIDES = {"height": 16, "width": 16, "video_height": 16, "video_width": 16}


def _inline(node: Any, definitions: dict[str, Any]) -> Any:
    """`node` with every local `$ref` replaced by its definition (an OpenAPI operation cannot hold `$defs`)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(definitions[ref.removeprefix("#/$defs/")], definitions)
        return {key: _inline(value, definitions) for key, value in node.items() if key != "$defs"}
    if isinstance(node, list):
        return [_inline(item, definitions) for item in node]
    return node


def _bound(field: dict[str, Any], **bounds: int) -> None:
    """Set `bounds` on the field's integer schema (or on each integer member of its anyOf)."""
    for member in field.get("anyOf", [field]):
        if member.get("type") == "integer":
            member.update(bounds)


def instance_schema(limits: Limits) -> dict[str, Any]:
    """One instance (a GenerationRequest) with this server's maxima."""
    schema = GenerationRequest.model_json_schema()
    schema = _inline(copy.deepcopy(schema), schema.get("$defs", {}))
    properties = schema["properties"]
    for name, limit in _SERVER_LIMITED.items():
        _bound(properties[name], maximum=getattr(limits, limit))
    for name, multiple in _SIDES.items():
        _bound(properties[name], minimum=multiple, maximum=limits.max_side, multipleOf=multiple)
    return schema


def instances_body(limits: Limits, max_instances: int) -> dict[str, Any]:
    """The OpenAPI requestBody of a v1 body: {"instances": [...]} of 1 to `max_instances` instances."""
    body = {
        "type": "object",
        "required": ["instances"],
        "properties": {
            "instances": {
                "type": "array",
                "minItems": 1,
                "maxItems": max_instances,
                "items": instance_schema(limits),
            }
        },
    }
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": body}}}}
