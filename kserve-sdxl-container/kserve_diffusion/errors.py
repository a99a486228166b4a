"""Exceptions the server maps to answers: bad input (400), startup problems, load and time limits, failures.

The serving errors are also grpc-interceptor exceptions, so KServe's gRPC interceptor answers each with
its own status code (UNAVAILABLE, DEADLINE_EXCEEDED, ...); the REST handler uses `http_status`.
"""

from __future__ import annotations

from grpc_interceptor import exceptions as grpc_errors
from kserve.errors import InvalidInput


class ConfigError(Exception):
    """A startup problem the operator must fix (bad flag value, missing model folder, ...)."""


class RequestError(InvalidInput):
    """Bad request input: HTTP 400 / gRPC INVALID_ARGUMENT with a message naming the field."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")


class RequestErrors(RequestError):
    """Several bad fields at once, reported together in one 400."""

    def __init__(self, messages: list[str]):
        InvalidInput.__init__(self, "; ".join(messages))


class GenerationFailed(RuntimeError):
    """An internal failure while generating: HTTP 500 with a short message, details in the log."""


class ServingError(grpc_errors.GrpcException):
    """A request the server did not (fully) serve for a reason the client can act on."""

    http_status = 500
    outcome = "error"  # the `outcome` label of the requests metric

    def __init__(self, message: str, headers: dict[str, str] | None = None):
        super().__init__(details=message)
        self.message = message
        self.headers = headers or {}

    def __str__(self) -> str:
        return self.message


class ServerBusy(ServingError, grpc_errors.Unavailable):
    """The queue is full: 503 with Retry-After / UNAVAILABLE."""

    http_status = 503
    outcome = "rejected"

    def __init__(self, message: str, retry_after: int):
        super().__init__(message, {"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class ShuttingDown(ServingError, grpc_errors.Unavailable):
    """The server is draining for shutdown: 503 / UNAVAILABLE; another replica can take the request."""

    http_status = 503
    outcome = "rejected"


class DeadlineExceeded(ServingError, grpc_errors.DeadlineExceeded):
    """The request's time ran out, queued or generating: 504 / DEADLINE_EXCEEDED."""

    http_status = 504
    outcome = "timeout"


class ClientGone(ServingError, grpc_errors.Cancelled):
    """The client disconnected; nobody reads this answer (499, nginx's code for it)."""

    http_status = 499
    outcome = "cancelled"


class OutOfMemory(ServingError, grpc_errors.ResourceExhausted):
    """The accelerator (or host) ran out of memory for this request: 507 / RESOURCE_EXHAUSTED."""

    http_status = 507
    outcome = "oom"


class JobCancelled(ServingError, grpc_errors.Cancelled):
    """The job was cancelled (DELETE): it stops at its next denoising step, or never runs if queued."""

    http_status = 499
    outcome = "cancelled"


class JobNotFound(ServingError, grpc_errors.NotFound):
    """No such job (never made, or forgotten after --job_ttl_seconds): 404."""

    http_status = 404
    outcome = "invalid"


class JobFinished(ServingError, grpc_errors.FailedPrecondition):
    """The job has already finished, so it cannot be cancelled: 409."""

    http_status = 409
    outcome = "invalid"


class TooManyJobs(ServingError, grpc_errors.ResourceExhausted):
    """One caller holds --max_jobs_per_owner unfinished jobs: 429 with Retry-After."""

    http_status = 429
    outcome = "rejected"

    def __init__(self, message: str, retry_after: int = 30):
        super().__init__(message, {"Retry-After": str(retry_after)})


class JobStoreLost(ServingError, grpc_errors.Unavailable):
    """The store no longer holds a running job's record (evicted, or Redis lost its data): the job stops."""

    http_status = 503
    outcome = "error"


class RankLost(ServingError, grpc_errors.Unavailable):
    """A rank of the context-parallel group died or stopped answering: the request failed, the group restarts."""

    http_status = 503
    outcome = "error"


class JobTakenOver(ServingError, grpc_errors.Aborted):
    """This replica's lease on a job lapsed and another replica took it: this try stops and writes nothing."""

    http_status = 409
    outcome = "cancelled"


class JobStoreUnavailable(ServingError, grpc_errors.Unavailable):
    """The job store cannot take or answer jobs now (unreachable, or full): 503 with Retry-After."""

    http_status = 503
    outcome = "rejected"

    def __init__(self, message: str, retry_after: int = 5):
        super().__init__(message, {"Retry-After": str(retry_after)})


class OutputStoreUnavailable(ServingError, grpc_errors.Unavailable):
    """The --output_store does not answer now: 503 with Retry-After for answers that need it (URLs); base64 answers
    still work."""

    http_status = 503
    outcome = "rejected"

    def __init__(self, message: str, retry_after: int = 10):
        super().__init__(message, {"Retry-After": str(retry_after)})


class OutputStoreFailed(ServingError, grpc_errors.Internal):
    """The --output_store answered an upload or read with an error (after boto3's retries): 502 / INTERNAL. The
    message names the operation and the store's error code, never credentials."""

    http_status = 502
    outcome = "error"


class OutputGone(ServingError, grpc_errors.NotFound):
    """A finished job's files are no longer in the --output_store (a lifecycle rule deleted them): 410."""

    http_status = 410
    outcome = "invalid"


class MarkingFailed(ServingError, grpc_errors.Internal):
    """Signing an output's C2PA content credentials (or watermarking it) failed at runtime: 500 / INTERNAL, and
    the file is not sent unmarked."""

    http_status = 500
    outcome = "error"
