"""The kserve.Model adapter: v1 and v2 (REST and gRPC) predict, readiness and metadata, all delegated to
the GenerationService."""

from __future__ import annotations

from functools import partial
from typing import Any

from kserve import Model
from kserve.protocol.infer_type import InferRequest, InferResponse

from ..errors import RequestError
from ..redact import request_id
from ..runtime.service import GenerationService
from . import v1, v2, v2_inputs


class DiffusionModel(Model):
    """KServe's view of the served model; it keeps no state of its own."""

    def __init__(self, service: GenerationService):
        self.service = service  # before Model.__init__, which sets `ready`
        super().__init__(service.name)

    @property  # type: ignore[override]
    def ready(self) -> bool:
        """Ready while the service is loaded and not draining (KServe's health routes read this)."""
        return self.service.ready

    @ready.setter
    def ready(self, value: bool) -> None:
        # KServe writes this on construction and in start(); readiness is the service's alone (loaded and
        # not draining), so those writes are ignored.
        del value

    def load(self) -> bool:
        """Load the pipelines once (KServe calls this before serving)."""
        return self.service.load()

    def stop(self) -> None:
        """Finish the running generation, then stop the worker and the encode pool."""
        self.service.stop()

    def get_input_types(self) -> list[dict[str, Any]]:
        """v2 metadata: the input tensors."""
        return v2.input_types()

    def get_output_types(self) -> list[dict[str, Any]]:
        """v2 metadata: the output tensors."""
        return v2.output_types(self.service.tasks())

    async def explain(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        """`:explain`: there is nothing to explain (KServe's default would blame a missing predictor host)."""
        raise RequestError(
            "explain", "this server has no explainer: it generates images and videos; send the request to :predict"
        )

    async def predict(
        self, payload: dict | bytes | InferRequest, headers: dict[str, str] | None = None
    ) -> dict | InferResponse:
        """v1 body or v2 InferRequest in; every instance is validated (inputs fetched) before any is generated."""
        rid = request_id((headers or {}).get("x-request-id"))
        if isinstance(payload, InferRequest):
            check = partial(v2.check_requested_outputs, payload)
            [result] = await self.service.generate([v2_inputs.read_instance(payload)], rid, check)
            return v2.build_response(payload, result, self.name)
        instances = v1.read_instances(payload, self.service.config.max_instances)
        return v1.build_response(await self.service.generate(instances, rid))
