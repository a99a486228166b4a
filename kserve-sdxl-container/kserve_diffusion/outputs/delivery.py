"""Between a finished generation and its answer: files uploaded to --output_store and linked (response_format url),
and, for jobs, the stored predictions (object URIs) turned back into URLs or data URLs when a job is read."""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import replace
from typing import Any

from .. import media
from ..api.results import GenerationResult
from ..errors import OutputGone, OutputStoreFailed, OutputStoreUnavailable
from ..redact import without_job_ids
from .s3 import OutputStore

logger = logging.getLogger("kserve.diffusion")
EXTENSIONS = {"jpeg": "jpg"}  # the file name's extension where it is not the format's name
FILE_FIELDS = ("images", "video")  # a v1 prediction's file fields
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def extension(output_format: str) -> str:
    """The object key's extension for a file format."""
    return EXTENSIONS.get(output_format, output_format)


def content_type_of(key: str) -> str:
    """The content type of a stored file, from its key's extension."""
    ext = key.rsplit(".", 1)[-1]
    name = next((fmt for fmt, e in EXTENSIONS.items() if e == ext), ext)
    return media.content_type(name) if name in media.MIME_TYPES else "application/octet-stream"


def request_object_id(request_id: str) -> str:
    """A :predict request's part of its object keys: its id (made safe for a key) and a random suffix, so two
    requests never share objects even when their callers send the same x-request-id."""
    safe = _UNSAFE.sub("_", request_id)[:64] or "request"
    return f"{safe}-{secrets.token_hex(6)}"


async def deliver(
    result: GenerationResult, store: OutputStore, object_id: str, first_index: int = 0
) -> GenerationResult:
    """`result` with its files uploaded under `object_id` (`objects`) and, for response_format url, presigned
    URLs (`urls`). A b64_json answer whose upload fails keeps its files inline (logged); a url answer fails."""
    wanted = result.response_format == "url"
    if not wanted and not store.worth_trying():
        return result  # the store is known to be down: keep the files inline now rather than after a failed try
    try:
        keys = await store.upload(
            result.files, result.content_type, extension(result.output_format), object_id, first_index
        )
    except (OutputStoreFailed, OutputStoreUnavailable) as exc:
        if wanted:
            raise
        logger.warning("upload of %s failed (%s): its files are kept inline", without_job_ids(object_id), exc)
        return result
    urls = tuple(store.presign(key) for key in keys) if wanted else ()
    return replace(result, objects=tuple(store.uri(key) for key in keys), urls=urls)


def holds_objects(predictions: bytes) -> bool:
    """Whether a job's stored predictions name files in the output store (rather than holding them)."""
    return b'"s3://' in predictions


def object_keys(predictions: list[dict[str, Any]], store: OutputStore) -> list[str]:
    """The keys of the store's objects a job's stored predictions name."""
    keys = []
    for prediction in predictions:
        for name in FILE_FIELDS:
            values = prediction.get(name)
            for value in values if isinstance(values, list) else [values]:
                key = store.key_of(value) if isinstance(value, str) else None
                if key is not None:
                    keys.append(key)
    return keys


async def resolve(predictions: list[dict[str, Any]], store: OutputStore) -> list[dict[str, Any]]:
    """A job's stored predictions as its reader gets them: each object URI becomes a fresh presigned URL (the job
    asked for url) or the file as a data URL (b64_json, read back from the store). 410 when a file is gone."""
    resolved = []
    for stored in predictions:
        prediction = dict(stored)
        as_url = prediction.pop("response_format", "b64_json") == "url"
        for name in FILE_FIELDS:
            if name in prediction:
                values = prediction[name] if isinstance(prediction[name], list) else [prediction[name]]
                shown = [await _resolve_one(value, store, as_url) for value in values]
                prediction[name] = shown if isinstance(prediction[name], list) else shown[0]
        resolved.append(prediction)
    return resolved


async def _resolve_one(value: str, store: OutputStore, as_url: bool) -> str:
    key = store.key_of(value)
    if key is None:  # kept inline (a data URL)
        return value
    if as_url:
        return store.presign(key)
    data = await store.fetch(key)
    if data is None:
        raise OutputGone("the job's files are no longer in the output store (its lifecycle rule deleted them)")
    return media.data_url(data, content_type_of(key))
