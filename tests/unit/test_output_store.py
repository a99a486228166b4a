"""--output_store without a store: settings, object keys, presigned URLs signed locally, error messages without
secrets, and the stored form of a job's predictions."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from urllib.parse import parse_qs, urlsplit

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
from kserve_diffusion.api.results import GenerationResult, VideoInfo
from kserve_diffusion.config import parse_config
from kserve_diffusion.errors import ConfigError
from kserve_diffusion.outputs.delivery import (
    content_type_of,
    extension,
    holds_objects,
    object_keys,
    request_object_id,
    resolve,
)
from kserve_diffusion.outputs.s3 import OutputStore, endpoint_from
from kserve_diffusion.server import v1

SECRET = "wJalrXUtnFEMI-secret-key-0123456789"
ENVIRON = {
    "AWS_ACCESS_KEY_ID": "AKIAUNITTEST00000001",
    "AWS_SECRET_ACCESS_KEY": SECRET,
    "AWS_S3_ENDPOINT": "minio.example.com:9000",
    "AWS_DEFAULT_REGION": "eu-west-1",
}


def store(url: str = "s3://results/runs/", ttl: int = 600) -> OutputStore:
    return OutputStore(url, "sdxl", ttl, environ=ENVIRON)


def test_the_settings_check_the_store_url_and_the_default_format() -> None:
    config = parse_config(["--output_store", "s3://results/a/b"], {}, cuda_available=lambda: False)
    assert (config.output_store, config.output_url_ttl_seconds, config.default_response_format) == (
        "s3://results/a/b",
        3600,
        "b64_json",
    )
    for bad in ("https://results/x", "s3://", "s3://user:pw@results/x", "s3://results/x?a=1"):
        with pytest.raises(ConfigError, match="expected s3://bucket/prefix") as error:
            parse_config(["--output_store", bad], {}, cuda_available=lambda: False)
        assert "pw" not in str(error.value)
    with pytest.raises(ConfigError, match="needs --output_store"):
        parse_config(["--default_response_format", "url"], {}, cuda_available=lambda: False)
    with pytest.raises(ConfigError, match="1 to 604800"):
        parse_config(["--output_url_ttl_seconds", "604801"], {}, cuda_available=lambda: False)


def test_keys_follow_prefix_model_date_id_index() -> None:
    day = datetime(2026, 12, 4, 23, 59, tzinfo=timezone.utc)
    assert store().key("job_ab", 3, "mp4", day) == "runs/sdxl/2026-12-04/job_ab/3.mp4"
    assert store("s3://results").key("r-1", 0, "png", day) == "sdxl/2026-12-04/r-1/0.png"
    assert (extension("jpeg"), extension("png"), content_type_of("a/b/0.jpg"), content_type_of("0.mp4")) == (
        "jpg",
        "png",
        "image/jpeg",
        "video/mp4",
    )


def test_a_request_id_becomes_a_safe_unique_key_part() -> None:
    first, second = request_object_id("../../etc/x y"), request_object_id("../../etc/x y")
    assert first != second and "/" not in first and "." not in first and " " not in first
    assert request_object_id("a" * 300).startswith("a" * 64 + "-") and len(request_object_id("")) > 8


def test_presigned_urls_are_signed_here_for_the_ttl() -> None:
    outputs = store(ttl=600)
    assert outputs.endpoint == "https://minio.example.com:9000"  # a data connection's bare host name
    url = outputs.presign("runs/sdxl/2026-12-04/job_ab/0.png")
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    assert parts.netloc == "minio.example.com:9000" and parts.path == "/results/runs/sdxl/2026-12-04/job_ab/0.png"
    assert query["X-Amz-Expires"] == ["600"] and query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert "eu-west-1" in query["X-Amz-Credential"][0] and SECRET not in url


def test_the_endpoint_comes_from_the_standard_variables_in_order() -> None:
    assert endpoint_from({}) is None
    assert endpoint_from({"AWS_S3_ENDPOINT": "http://minio:9000", "AWS_ENDPOINT_URL": "http://b"}) == "http://b"
    assert endpoint_from({"AWS_ENDPOINT_URL_S3": "http://a", "AWS_ENDPOINT_URL": "http://b"}) == "http://a"


def test_store_errors_are_described_by_code_never_with_a_secret() -> None:
    outputs = store()
    denied = ClientError(
        {
            "Error": {"Code": "SignatureDoesNotMatch", "Message": f"key {SECRET} does not match"},
            "ResponseMetadata": {"HTTPStatusCode": 403},
        },
        "PutObject",
    )
    assert outputs.describe(denied) == "SignatureDoesNotMatch (HTTP 403)"
    assert "AWS_SECRET_ACCESS_KEY" in outputs.describe(NoCredentialsError())
    assert outputs.describe(EndpointConnectionError(endpoint_url="http://x")) == "EndpointConnectionError"
    assert SECRET not in outputs.describe(RuntimeError(SECRET))
    assert SECRET not in repr(parse_config(["--output_store", "s3://r/x"], ENVIRON, cuda_available=lambda: False))


def test_a_job_stores_object_uris_and_shows_urls_or_files() -> None:
    outputs = store()
    uris = ("s3://results/runs/sdxl/2026-12-04/job_x/0.png", "s3://results/runs/sdxl/2026-12-04/job_x/1.png")
    images = GenerationResult("text2img", 1, [b"a", b"b"], "png", 64, 64, response_format="url", objects=uris)
    video = GenerationResult(
        "text2video", 2, [b"mp4"], "mp4", 64, 64, VideoInfo(5, 8, 64, 64, 0.625), objects=(uris[0][:-3] + "mp4",)
    )
    inline = GenerationResult("text2img", 3, [b"c"], "png", 64, 64)
    stored = v1.stored_predictions([images, video, inline])
    assert stored[0]["images"] == list(uris) and stored[0]["response_format"] == "url"
    assert stored[1]["video"].endswith("/0.mp4") and stored[1]["response_format"] == "b64_json"
    assert stored[2]["images"][0].startswith("data:image/png;base64,") and "response_format" not in stored[2]
    assert holds_objects(b'[{"images": ["s3://results/x"]}]') and not holds_objects(b'[{"images": ["data:"]}]')
    assert object_keys(stored, outputs) == [uri.removeprefix("s3://results/") for uri in (*uris, stored[1]["video"])]

    async def fetched(key: str) -> bytes:
        return b"MP4 " + key.encode()

    outputs.fetch = fetched  # type: ignore[method-assign] - the store's reads, without a store
    shown = asyncio.run(resolve(stored, outputs))
    assert all(url.startswith("https://minio.example.com:9000/results/runs/") for url in shown[0]["images"])
    assert "response_format" not in shown[0] and shown[2] == stored[2]
    assert shown[1]["video"].startswith("data:video/mp4;base64,")


def test_while_down_one_inline_upload_tries_the_store_every_probe_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    outputs = store()
    now = [100.0]
    monkeypatch.setattr("kserve_diffusion.outputs.s3.time.monotonic", lambda: now[0])
    assert outputs.worth_trying()
    outputs.available, outputs._probed_at = False, now[0]  # what a failed call leaves
    assert not outputs.worth_trying()
    now[0] += 2.5
    assert outputs.worth_trying() and not outputs.worth_trying()  # one try through, the next waits again
