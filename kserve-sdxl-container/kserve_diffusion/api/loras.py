"""The `loras` request field: a list of adapters by name and scale, read by hand so each message names the item
and its part ("loras: [1].scale must be ...")."""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict

from .messages import CompleteProblem, shown

LORA_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")  # no separators, no leading dot (no "..")
LORA_SCALE_RANGE = (-4.0, 4.0)  # negative scales steer away (slider adapters); beyond 4 images break down
LORA_KEYS = frozenset({"name", "scale"})


class LoraChoice(BaseModel):
    """One adapter of a request's `loras`: its name in --lora_dir and how strongly it applies."""

    model_config = ConfigDict(frozen=True)

    name: str
    scale: float = 1.0


def _lora_choice(index: int, item: Any) -> LoraChoice:
    """One `loras` item checked by hand, so the message names the item and its part ("loras[1].scale")."""
    where = f"[{index}]"
    if not isinstance(item, dict):
        raise CompleteProblem(f'{where} must be an object like {{"name": "...", "scale": 1.0}}, got {shown(item)}')
    unknown = sorted(str(key) for key in item.keys() - LORA_KEYS)
    if unknown:
        raise CompleteProblem(f"{where}: unknown key {shown(unknown[0])} (allowed: name, scale)")
    name = item.get("name")
    if not isinstance(name, str) or not LORA_NAME.fullmatch(name):
        raise CompleteProblem(
            f"{where}.name must be an adapter name of 1-128 letters, digits, '.', '_' or '-' (no path, no leading "
            f"'.'), got {shown(name)}"
        )
    scale = item.get("scale", 1.0)
    low, high = LORA_SCALE_RANGE
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not low <= scale <= high:
        raise CompleteProblem(f"{where}.scale must be a number between {low:g} and {high:g}, got {shown(scale)}")
    return LoraChoice.model_construct(name=name, scale=float(scale))


def read_loras(value: Any, limit: int) -> tuple[LoraChoice, ...] | None:
    """The adapters of a request: a list of {"name", "scale"} objects, or that list as JSON text (v2 BYTES
    tensors and parameters, form fields); at most `limit`, each name once."""
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise CompleteProblem(f"must be a JSON list of adapters, got {shown(value)}") from None
    if value is None:
        return None
    if not isinstance(value, list):
        raise CompleteProblem(f'must be a list like [{{"name": "...", "scale": 1.0}}], got {shown(value)}')
    if len(value) > limit:
        raise CompleteProblem(f"at most {limit} adapters per request (--max_loras_per_request), got {len(value)}")
    choices = tuple(_lora_choice(index, item) for index, item in enumerate(value))
    names = [choice.name for choice in choices]
    repeated = next((name for name in names if names.count(name) > 1), None)
    if repeated is not None:
        raise CompleteProblem(f"names each adapter once (combine scales into one item), got {repeated!r} twice")
    return choices
