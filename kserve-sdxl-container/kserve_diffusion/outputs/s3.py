"""--output_store s3://bucket/prefix: one boto3 client for an S3-compatible store (AWS S3, MinIO, Ceph, ...).

Every call to the store runs on this module's thread pool, never on the event loop or the accelerator thread.
Credentials come from boto3's own chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a web identity, ...); the
endpoint from AWS_ENDPOINT_URL(_S3) or an OpenShift AI data connection's AWS_S3_ENDPOINT. No message this
module makes holds a credential: store errors are reported by their code, and any secret value from the
environment is masked in what is left.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

from prometheus_client import Counter, Histogram

from ..errors import ConfigError, OutputStoreFailed, OutputStoreUnavailable
from ..redact import without_password

logger = logging.getLogger("kserve.diffusion")
T = TypeVar("T")
UPLOAD_THREADS = 8  # files of one answer go up at once; boto3's client is thread-safe
CHUNK_BYTES = 1 << 20  # an object streamed through the server is read in pieces of this size
PROBE_SECONDS = 2.0  # while the store is down, a url request checks it again at most this often
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_S3_ENDPOINT")  # the last: OpenShift AI data connections
DOWN = "the output store (--output_store) is unreachable"
# Its metrics live here, not in runtime/metrics.py: this layer sits below the runtime that uses it.
UPLOAD_TIME = Histogram(
    "kserve_diffusion_output_upload_seconds",
    "Time to upload one answer's files to --output_store",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
STORE_ERRORS = Counter(
    "kserve_diffusion_output_store_errors", "--output_store calls that failed (unreachable, or answered an error)"
)


@dataclass(frozen=True)
class StoredObject:
    """An object read back: its size, content type and bytes in chunks."""

    size: int
    content_type: str
    chunks: AsyncIterator[bytes]


def endpoint_from(environ: Mapping[str, str]) -> str | None:
    """The store's endpoint URL from the environment (None: AWS S3 itself)."""
    endpoint = next((environ[name] for name in ENDPOINT_ENV if environ.get(name)), None)
    if endpoint and "://" not in endpoint:  # data connections sometimes hold a bare host name
        endpoint = "https://" + endpoint
    return endpoint


class OutputStore:
    """The bucket and prefix results go to: uploads, presigned GET URLs, reads and deletes, and whether the store
    answers (a url request is refused with 503 while it does not)."""

    def __init__(
        self,
        url: str,
        model_name: str,
        ttl_seconds: int,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        import boto3  # here, not at import time: a server without --output_store never loads it
        from botocore.config import Config

        environ = os.environ if environ is None else environ
        parts = urlsplit(url)
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        self.model_name = model_name
        self.ttl_seconds = ttl_seconds
        self.endpoint = endpoint_from(environ)
        self._secrets = [environ[name] for name in SECRET_ENV if len(environ.get(name, "")) >= 4]
        region = environ.get("AWS_DEFAULT_REGION") or environ.get("AWS_REGION") or "us-east-1"
        # Path-style addressing for another store's endpoint: MinIO, Ceph and the like serve buckets under the
        # path, and a bucket host name (bucket.minio:9000) would not resolve in a cluster.
        addressing = {"addressing_style": "path"} if self.endpoint else {}
        common = {"signature_version": "s3v4", "s3": addressing, "max_pool_connections": UPLOAD_THREADS * 2}
        # Keys in the environment given (os.environ in the server); else boto3's own chain (web identity, ...).
        keys = {
            "aws_access_key_id": environ.get("AWS_ACCESS_KEY_ID"),
            "aws_secret_access_key": environ.get("AWS_SECRET_ACCESS_KEY"),
            "aws_session_token": environ.get("AWS_SESSION_TOKEN"),
        }
        session = boto3.session.Session(**keys) if keys["aws_access_key_id"] else boto3.session.Session()
        options = {"region_name": region, "endpoint_url": self.endpoint}
        standard = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=60, **common)
        self.client = session.client("s3", config=standard, **options)
        # The check at start-up and the probes while down: one try, short timeouts (a request waits on it).
        quick = Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=2, read_timeout=5, **common)
        self._probe_client = session.client("s3", config=quick, **options)
        self.pool = ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="output-store")
        self.available = True
        self._probed_at = 0.0

    @property
    def location(self) -> str:
        """s3://bucket/prefix, for messages."""
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def uri(self, key: str) -> str:
        """The object's s3:// URI (what a job keeps)."""
        return f"s3://{self.bucket}/{key}"

    def key_of(self, uri: str) -> str | None:
        """The key of an s3:// URI in this bucket (None for anything else)."""
        start = f"s3://{self.bucket}/"
        return uri[len(start) :] if uri.startswith(start) else None

    def key(self, object_id: str, index: int, extension: str, day: datetime | None = None) -> str:
        """{prefix}/{model}/{YYYY-MM-DD}/{id}/{index}.{ext} (the date in UTC)."""
        date = (day or datetime.now(timezone.utc)).strftime("%Y-%m-%d")
        parts = [self.prefix, self.model_name, date, object_id, f"{index}.{extension}"]
        return "/".join(part for part in parts if part)

    def check(self) -> None:
        """At start-up: the bucket answers with these credentials (ConfigError, credentials masked, if not)."""
        try:
            self._probe_client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            where = f"at {without_password(self.endpoint)}" if self.endpoint else "on AWS S3"
            raise ConfigError(
                f"--output_store {self.location}: the bucket {where} did not answer: {self.describe(exc)}"
            ) from None
        logger.info("output store %s ready (presigned URLs live %ds)", self.location, self.ttl_seconds)

    def describe(self, exc: BaseException) -> str:
        """What went wrong, for a log line or an answer: the store's error code, or the kind of failure."""
        from botocore.exceptions import ClientError, NoCredentialsError

        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            text = f"{error.get('Code', 'error')} (HTTP {status})"
        elif isinstance(exc, NoCredentialsError):
            text = "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or mount the data connection)"
        else:
            text = type(exc).__name__
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    async def _call(self, operation: str, function: Callable[[], T]) -> T:
        """Run one store call on the pool; unreachable -> 503 (and the store is marked down), an error -> 502."""
        from botocore.exceptions import ClientError, HTTPClientError
        from botocore.exceptions import ConnectionError as StoreConnectionError

        try:
            value = await asyncio.get_running_loop().run_in_executor(self.pool, function)
        except (StoreConnectionError, HTTPClientError) as exc:
            STORE_ERRORS.inc()
            if self.available:
                logger.error(
                    "output store %s unreachable (%s): url answers are refused until it is back",
                    self.location,
                    self.describe(exc),
                )
            self.available = False
            self._probed_at = time.monotonic()
            raise OutputStoreUnavailable(f"{DOWN}; retry later, or ask for response_format b64_json") from None
        except ClientError as exc:
            STORE_ERRORS.inc()
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            if status == 503:  # the store's own "slow down" / unavailable, after boto3's retries
                raise OutputStoreUnavailable(f"the output store is busy ({self.describe(exc)}); retry later") from None
            logger.error("output store %s: %s failed: %s", self.location, operation, self.describe(exc))
            raise OutputStoreFailed(f"the output store failed to {operation} ({self.describe(exc)})") from None
        except Exception as exc:
            STORE_ERRORS.inc()
            logger.error("output store %s: %s failed: %s", self.location, operation, self.describe(exc))
            raise OutputStoreFailed(f"the output store failed to {operation} ({self.describe(exc)})") from None
        if not self.available:
            logger.info("output store %s answers again", self.location)
            self.available = True
        return value

    async def ensure_available(self) -> None:
        """Before a url request is admitted: 503 while the store is known to be down (checked again at most every
        PROBE_SECONDS, so it comes back on its own)."""
        if self.available:
            return
        if time.monotonic() - self._probed_at < PROBE_SECONDS:
            raise OutputStoreUnavailable(f"{DOWN}; retry later, or ask for response_format b64_json")
        self._probed_at = time.monotonic()
        await self._call("answer", partial(self._probe_client.head_bucket, Bucket=self.bucket))

    def worth_trying(self) -> bool:
        """For an upload that may fall back to inline files (b64_json jobs): whether to try the store now. While it
        is down, one try passes every PROBE_SECONDS (a success marks it up again); the others answer inline."""
        if self.available:
            return True
        if time.monotonic() - self._probed_at < PROBE_SECONDS:
            return False
        self._probed_at = time.monotonic()
        return True

    async def upload(
        self, files: list[bytes], content_type: str, extension: str, object_id: str, first_index: int = 0
    ) -> list[str]:
        """Put `files` as {id}/{first_index + i}.{extension}, all at once; their keys."""
        started = time.perf_counter()
        keys = [self.key(object_id, first_index + index, extension) for index in range(len(files))]
        puts = [
            self._call(
                "store the files",
                partial(self.client.put_object, Bucket=self.bucket, Key=key, Body=data, ContentType=content_type),
            )
            for key, data in zip(keys, files, strict=True)
        ]
        await asyncio.gather(*puts)
        UPLOAD_TIME.observe(time.perf_counter() - started)
        return keys

    def presign(self, key: str) -> str:
        """A GET URL for `key` that lives --output_url_ttl_seconds (signed here: no call to the store)."""
        params = {"Bucket": self.bucket, "Key": key}
        return str(self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=self.ttl_seconds))

    async def fetch(self, key: str) -> bytes | None:
        """The object's bytes, or None when it is gone (a lifecycle rule deleted it)."""
        stored = await self.open(key)
        if stored is None:
            return None
        return b"".join([chunk async for chunk in stored.chunks])

    async def open(self, key: str) -> StoredObject | None:
        """The object as chunks read on the pool, or None when it is gone."""
        from botocore.exceptions import ClientError

        get = partial(self.client.get_object, Bucket=self.bucket, Key=key)
        response = await self._call("read a file", _missing_as_none(get, ClientError))
        if response is None:
            return None
        body = response["Body"]
        loop = asyncio.get_running_loop()

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while chunk := await loop.run_in_executor(self.pool, body.read, CHUNK_BYTES):
                    yield chunk
            finally:
                body.close()

        return StoredObject(int(response["ContentLength"]), str(response.get("ContentType", "")), chunks())

    async def delete(self, keys: list[str]) -> None:
        """Delete objects (a deleted job's files); a failure is logged, not raised: a lifecycle rule ends them."""
        if not keys:
            return
        objects = {"Objects": [{"Key": key} for key in keys], "Quiet": True}
        try:
            await self._call("delete files", partial(self.client.delete_objects, Bucket=self.bucket, Delete=objects))
        except (OutputStoreFailed, OutputStoreUnavailable) as exc:
            left = len(keys)
            logger.warning("output store %s: %d object(s) left for the lifecycle rule: %s", self.location, left, exc)

    def close(self) -> None:
        """Let the pool's threads finish."""
        self.pool.shutdown(wait=True)


def _missing_as_none(get: Callable[[], Any], client_error: type[Exception]) -> Callable[[], Any]:
    def call() -> Any:
        try:
            return get()
        except client_error as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):  # type: ignore[attr-defined]
                return None
            raise

    return call


def open_output_store(url: str | None, model_name: str, ttl_seconds: int) -> OutputStore | None:
    """--output_store checked reachable (ConfigError otherwise: a startup error), or None when unset."""
    if url is None:
        return None
    store = OutputStore(url, model_name, ttl_seconds)
    store.check()
    return store
