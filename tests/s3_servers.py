"""Real S3-compatible server processes for the output-store tests: `moto_server` (moto[server], installed with
the test extras) and `s3rver` (Node; `make test` installs it with npm when npm is there) - s3rver because it
enforces presigned URLs' expiry and signatures, which moto does not check."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import boto3
import httpx
import pytest
from botocore.config import Config

ROOT = Path(__file__).parents[1]
BUCKET = "results"
# The credentials the tests' stores accept: s3rver's fixed pair; moto takes any, so it gets a secret that is easy
# to look for in logs and answers.
CREDENTIALS = {"s3rver": ("S3RVER", "S3RVER"), "moto": ("AKIATESTKEYID0000001", "moto-secret-never-shown-0123456789")}
S3RVER = ROOT / ".tools" / "s3rver" / "node_modules" / ".bin" / "s3rver"


def _moto_binary() -> str | None:
    beside = Path(sys.executable).with_name("moto_server")  # the test environment's own
    return str(beside) if beside.exists() else shutil.which("moto_server")


class S3Process:
    """An S3 API server on a free loopback port, with the bucket `results`; stop() and start() again (moto
    loses its objects and buckets when stopped; the bucket is made again)."""

    def __init__(self, kind: str, folder: Path, port: int) -> None:
        self.kind, self.folder, self.port = kind, folder, port
        self.credentials = CREDENTIALS[kind]
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def endpoint(self) -> str:
        """The endpoint URL (AWS_ENDPOINT_URL)."""
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """The server's command line."""
        if self.kind == "moto":
            binary = _moto_binary()
            if binary is None:
                pytest.skip("moto_server is not installed: pip install 'moto[server]' (make test installs it)")
            return [binary, "-H", "127.0.0.1", "-p", str(self.port)]
        if not S3RVER.exists():
            pytest.skip("s3rver is not installed: it needs npm (apt-get install npm); make test then installs it")
        data = self.folder / "data"
        data.mkdir(exist_ok=True)
        return [str(S3RVER), "-d", str(data), "-a", "127.0.0.1", "-p", str(self.port), "--configure-bucket", BUCKET]

    def environment(self) -> dict[str, str]:
        """What a server process needs to reach this store (the AWS variables an operator would set)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.credentials[0],
            "AWS_SECRET_ACCESS_KEY": self.credentials[1],
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self) -> object:
        """A boto3 client of the store (the test's own view of the bucket)."""
        config = Config(signature_version="s3v4", s3={"addressing_style": "path"}, retries={"max_attempts": 1})
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.credentials[0],
            aws_secret_access_key=self.credentials[1],
            region_name="us-east-1",
            config=config,
        )

    def start(self) -> S3Process:
        """Start the server and wait until the bucket answers."""
        log = open(self.folder / f"{self.kind}.log", "ab")  # noqa: SIM115 - the process keeps it
        env = {**os.environ, "HOME": str(self.folder)}
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.folder, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(self.endpoint, timeout=1)
                break
            except httpx.HTTPError:
                if self.process.poll() is not None:
                    log_text = (self.folder / f"{self.kind}.log").read_text()[-2000:]
                    raise RuntimeError(f"{self.kind} exited: {log_text}") from None
                time.sleep(0.1)
        else:
            raise RuntimeError(f"{self.kind} did not start")
        if self.kind == "moto":
            self.client().create_bucket(Bucket=BUCKET)  # type: ignore[attr-defined]
        return self

    def stop(self) -> None:
        """Stop the server."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)
