"""The kserve.Model: loads the family once, adapts protocols, runs generations on the worker."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from functools import partial
from typing import Any

from kserve import Model
from kserve.protocol.infer_type import InferRequest, InferResponse

from . import protocols
from .config import ServerConfig
from .errors import GenerationFailed
from .families import Family, Runner
from .inputs import InputImages, InputLoader, InputPolicy
from .schemas import GenerationRequest, Limits, parse_request
from .worker import GenerationWorker

logger = logging.getLogger("kserve.diffusion")
RANDOM_SEED_RANGE = 2**32


class DiffusionModel(Model):
    """One served model family: v1 and v2 (REST and gRPC) predict, never blocking the event loop."""

    def __init__(self, config: ServerConfig, family: Family):
        super().__init__(config.model_name)
        self.config = config
        self.family = family
        self.limits = Limits.from_config(config)
        self.runner: Runner | None = None
        self.inputs: InputLoader | None = None
        self.worker = GenerationWorker()

    def load(self) -> bool:
        """Load the pipelines exactly once; ready only afterwards."""
        if self.runner is None:
            started = time.perf_counter()
            self.runner = self.family.load(self.config)
            self.inputs = InputLoader(InputPolicy.from_config(self.config), self.limits, self.runner.size_multiple)
            logger.info(
                "model %r (%s) loaded in %.1fs on %s as %s",
                self.name,
                self.family.title,
                time.perf_counter() - started,
                self.config.device,
                self.config.dtype,
            )
        self.ready = True
        return self.ready

    def stop(self) -> None:
        """Let the running generation finish, then stop the worker thread."""
        self.ready = False
        self.worker.shutdown()

    def get_input_types(self) -> list[dict[str, Any]]:
        """v2 metadata: the input tensors."""
        return protocols.v2_input_types()

    def get_output_types(self) -> list[dict[str, Any]]:
        """v2 metadata: the output tensors."""
        return protocols.v2_output_types(self.runner.tasks if self.runner else ())

    def _check(self, instance: Any) -> GenerationRequest:
        assert self.runner is not None
        return self.runner.check(parse_request(instance, self.limits), self.limits)

    async def _with_inputs(self, request: GenerationRequest) -> tuple[GenerationRequest, InputImages]:
        assert self.inputs is not None
        return await self.inputs.load(request)

    async def predict(
        self, payload: dict | bytes | InferRequest, headers: dict[str, str] | None = None
    ) -> dict | InferResponse:
        """v1 body or v2 InferRequest in; every instance is validated (inputs fetched) before any is generated."""
        request_id = (headers or {}).get("x-request-id") or uuid.uuid4().hex[:16]
        if isinstance(payload, InferRequest):
            request, inputs = await self._with_inputs(self._check(protocols.v2_instance(payload)))
            result = await self._generate(request, inputs, request_id)
            return protocols.v2_response(payload, result, self.name)
        checked = [self._check(i) for i in protocols.v1_instances(payload, self.config.max_instances)]
        jobs = [await self._with_inputs(request) for request in checked]
        return protocols.v1_response([await self._generate(r, inputs, request_id) for r, inputs in jobs])

    async def _generate(
        self, request: GenerationRequest, inputs: InputImages, request_id: str
    ) -> protocols.GenerationResult:
        assert self.runner is not None and request.task_type is not None
        seed = request.seed if request.seed is not None else secrets.randbelow(RANDOM_SEED_RANGE)
        try:
            timed = await self.worker.run(partial(self.runner.generate, request, seed, inputs))
        except Exception as exc:
            logger.exception("request %s failed during generation", request_id)
            raise GenerationFailed(
                f"generation failed ({type(exc).__name__}); the server log has details under request id {request_id}"
            ) from None
        # Encoding is CPU work: it runs beside the event loop and off the accelerator thread.
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(None, protocols.encode_result, request, seed, timed.value)
        width, height = (result.video.width, result.video.height) if result.video else (request.width, request.height)
        logger.info(
            "request=%s task=%s size=%dx%d steps=%d %s scheduler=%s seed=%d queue_wait=%.3fs generation=%.3fs",
            request_id,
            request.task_type,
            width,
            height,
            request.num_inference_steps,
            f"frames={result.video.num_frames}" if result.video else f"images={len(result.files)}",
            request.scheduler,
            seed,
            timed.queue_wait,
            timed.run_time,
        )
        return result
