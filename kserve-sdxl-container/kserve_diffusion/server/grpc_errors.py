"""gRPC failures as status codes with one log line for a client's mistake, never a traceback.

KServe's gRPC exception interceptor logs every INVALID_ARGUMENT and NOT_FOUND as an ERROR with a
traceback (a fuzzer's 68,000 requests wrote 99 MB of log). KServe builds its gRPC server itself, so
`install` puts this subclass in place of KServe's interceptor for this process; failures of the
server itself still go to KServe's handling (an ERROR with the traceback, INTERNAL).
"""

from __future__ import annotations

from typing import Any

from grpc import StatusCode
from grpc_interceptor.exceptions import GrpcException
from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady
from kserve.logging import logger
from kserve.protocol.grpc import server as kserve_grpc_server
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor

from ..redact import loggable
from .auth import UNAUTHENTICATED, ApiKeys, grpc_open

CLIENT_ERRORS: dict[type[Exception], StatusCode] = {
    InvalidInput: StatusCode.INVALID_ARGUMENT,  # our RequestError is one too
    ModelNotFound: StatusCode.NOT_FOUND,
    ModelNotReady: StatusCode.UNAVAILABLE,
}
MAX_DETAIL_CHARS = 500
API_KEYS = ApiKeys(())  # --api_keys, set by install()


class QuietExceptionToStatus(ExceptionToStatusInterceptor):
    """KServe's interceptor, with client errors answered with one warning line, and --api_keys checked first
    (UNAUTHENTICATED without one, except the health and readiness RPCs)."""

    async def intercept(self, method: Any, request_or_iterator: Any, context: Any, method_name: str) -> Any:
        """Check the caller's key, then call the method with KServe's error handling."""
        if API_KEYS.required and not grpc_open(method_name):
            metadata = dict(context.invocation_metadata() or ())
            if not API_KEYS.accepts(metadata.get("authorization")):
                logger.warning("rejected gRPC %s (UNAUTHENTICATED): missing or unknown API key", method_name)
                await context.abort(StatusCode.UNAUTHENTICATED, UNAUTHENTICATED)
        return await super().intercept(method, request_or_iterator, context, method_name)

    async def handle_exception(self, ex: Exception, request_or_iterator: Any, context: Any, method_name: str) -> None:
        """Abort the call with the status that fits `ex`."""
        for kind, status in CLIENT_ERRORS.items():
            if isinstance(ex, kind):
                detail = loggable(str(getattr(ex, "reason", ex)), MAX_DETAIL_CHARS)
                logger.warning("rejected gRPC %s (%s): %s", method_name, status.name, detail)
                await context.abort(status, detail)
        # Queue full, deadline, out of memory, repository refused: logged where raised.
        if isinstance(ex, GrpcException):
            await context.abort(ex.status_code, ex.details)
        await super().handle_exception(ex, request_or_iterator, context, method_name)


def install(keys: ApiKeys) -> None:
    """Make KServe's gRPC server use QuietExceptionToStatus (in this process), checking `keys`."""
    global API_KEYS
    API_KEYS = keys
    kserve_grpc_server.ExceptionToStatusInterceptor = QuietExceptionToStatus  # type: ignore[misc]
