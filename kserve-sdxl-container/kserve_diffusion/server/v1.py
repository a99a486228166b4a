"""The v1 protocol: `{"instances": [...]}` (or seed 000's `{"input": {...}}`) in, data URLs out."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import orjson

from ..api.results import GenerationResult, cache_fields
from ..errors import RequestError


def _decode_json(payload: Any) -> Any:
    if isinstance(payload, (bytes, bytearray, str)):
        # KServe hands over bodies without a JSON Content-Type (plain `curl -d`) undecoded.
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise RequestError("body", f"malformed JSON: {exc}") from None
    return payload


def read_instances(payload: Any, max_instances: int) -> list[dict[str, Any]]:
    """The instances of a v1 body: {"instances": [...]} or seed 000's {"input": {...}}."""
    body = _decode_json(payload)
    if isinstance(body, dict) and set(body) == {"instances"} and isinstance(body["instances"], list):
        instances = body["instances"]
    elif isinstance(body, dict) and set(body) == {"input"}:
        instances = [body["input"]]
    else:
        keys = sorted(body) if isinstance(body, dict) else type(body).__name__
        raise RequestError("body", f'expected {{"instances": [{{...}}]}} or {{"input": {{...}}}}, got {keys}')
    if not 1 <= len(instances) <= max_instances:
        raise RequestError("instances", f"must hold between 1 and {max_instances} instances, got {len(instances)}")
    return instances


def _prediction(result: GenerationResult) -> dict[str, Any]:
    prediction: dict[str, Any] = {"task_type": result.task_type, "seed": result.seed}
    if result.video is None:
        prediction["images"] = result.shown_files()
    else:
        prediction["video"] = result.shown_files()[0]
        prediction.update(asdict(result.video))
    if result.cache is not None:
        prediction["cache"] = cache_fields(result.cache)
    return prediction


def build_response(results: list[GenerationResult]) -> dict[str, Any]:
    """The v1 answer: one prediction per instance, images (or the video) as data URLs (or presigned URLs)."""
    return {"predictions": [_prediction(result) for result in results]}


def stored_predictions(results: list[GenerationResult]) -> list[dict[str, Any]]:
    """What a job keeps of its v1 answer: files uploaded to the output store as their s3:// URIs, with the
    response_format that says how to show them when the job is read (outputs/delivery.py resolve)."""
    predictions = []
    for result in results:
        prediction = _prediction(result)
        if result.objects:
            prediction["images" if result.video is None else "video"] = (
                list(result.objects) if result.video is None else result.objects[0]
            )
            prediction["response_format"] = result.response_format
        predictions.append(prediction)
    return predictions
