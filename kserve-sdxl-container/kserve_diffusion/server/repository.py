"""The model repository API, read-only: this server serves one model, loaded at start, for its lifetime.

KServe's repository extension lets any caller unload the model (`POST /v2/repository/models/{name}/unload`,
gRPC `RepositoryModelUnload`) until the pod restarts, while readiness stays true. Here load and unload
are refused over REST (403) and gRPC (PERMISSION_DENIED); an unknown name is a 404 / NOT_FOUND.
"""

from __future__ import annotations

from grpc_interceptor import exceptions as grpc_errors
from kserve.protocol.model_repository_extension import ModelRepositoryExtension

from ..api.messages import quoted
from ..errors import ServingError


class RepositoryReadOnly(ServingError, grpc_errors.PermissionDenied):
    """Load or unload of the served model: 403 / PERMISSION_DENIED."""

    http_status = 403
    outcome = "rejected"


class ModelNotServed(ServingError, grpc_errors.NotFound):
    """A repository call naming another model: 404 / NOT_FOUND."""

    http_status = 404
    outcome = "rejected"


class ReadOnlyRepository(ModelRepositoryExtension):
    """KServe's repository extension with load and unload refused."""

    def __init__(self, extension: ModelRepositoryExtension, served: str):
        super().__init__(model_registry=extension._model_registry)  # noqa: SLF001 - the same registry
        self.served = served

    def _refuse(self, model_name: str, verb: str) -> None:
        if model_name != self.served:
            raise ModelNotServed(f"model {quoted(model_name)} is not served here; this server serves {self.served!r}")
        raise RepositoryReadOnly(
            f"model {self.served!r} is loaded once at start and cannot be {verb}ed through the repository API; "
            "restart the server (or roll the deployment) to change it"
        )

    async def load(self, model_name: str) -> None:
        """Refused: the served model is already loaded, and no other can be."""
        self._refuse(model_name, "load")

    async def unload(self, model_name: str) -> None:
        """Refused: unloading would take the model away until restart."""
        self._refuse(model_name, "unload")
