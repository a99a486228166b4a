"""What may reach a log line or an answer: client text escaped and capped, URLs without their secrets.

Pre-signed URLs carry their signature in the query string, clients control headers and free-text
fields, and a newline in any of them would forge a log line. Everything client-made passes through
here before it is logged.
"""

from __future__ import annotations

import re
import uuid

MAX_LOGGED_CHARS = 100
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")


def loggable(text: str, limit: int = MAX_LOGGED_CHARS) -> str:
    """`text` on one line: control characters escaped (no forged lines), cut to `limit` characters."""
    escaped = text.encode("unicode_escape", errors="backslashreplace").decode("ascii")
    return escaped if len(escaped) <= limit else escaped[: limit - 3] + "..."


def strip_query(path: str) -> str:
    """A request path without its query string (which may hold tokens or signatures)."""
    return path.split("?", 1)[0]


def request_id(given: str | None) -> str:
    """The caller's request id (x-request-id) when it is a plain token of up to 128 characters, else a fresh
    one: the id ties the log lines of one request together, so it must not be able to forge or flood them."""
    if given and _REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex[:16]


def without_password(url: str) -> str:
    """A service URL (redis://user:password@host:port/db?...) without its password and query, for logs and
    error messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return strip_query(url)
    location = strip_query(rest)
    credentials, at, host = location.rpartition("@")
    if not at:
        return f"{scheme}://{location}"
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user + ':' if user else ':'}***@{host}"


_JOB_ID = re.compile(r"\b(job_[0-9a-f]{8})[0-9a-f]{32}\b")


def without_job_ids(text: str) -> str:
    """`text` with each job id cut to its first 8 hex digits: a job id is what gives access to its result."""
    return _JOB_ID.sub(r"\1...", text)
