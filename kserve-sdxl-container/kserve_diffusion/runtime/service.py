"""The protocol-free generation core: admission, validation, input loading, the accelerator worker,
encoding, errors and metrics. Every protocol adapter (v1, v2 REST and gRPC, OpenAI) calls `generate`.
It is one module because every path into the accelerator (a request, a job, the warm-up) shares its checks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch
from PIL import Image

from .. import media
from ..api.inputs import NO_INPUTS, InputImages
from ..api.request import TASK_INPUTS, TASK_TYPES, VIDEO_TASKS, GenerationRequest, Limits, fill, parse_request
from ..api.results import CacheReport, GenerationResult, encode_result
from ..config import ServerConfig
from ..errors import GenerationFailed, MarkingFailed, OutOfMemory, RequestError, ServingError, ShuttingDown
from ..marks import NO_MARKS, Marking, Marks, parse_marks
from ..outputs.delivery import deliver, request_object_id
from ..outputs.s3 import OutputStore
from ..parallel.plan import ParallelPlan
from ..pipelines import Family, Runner
from ..pipelines.lora_catalog import LoraCatalog
from . import metrics
from .control import CLIENT_DISCONNECTED, RequestControl
from .inputs import InputLoader, InputPolicy
from .worker import AcceleratorOutOfMemory, GenerationWorker, Reservation

logger = logging.getLogger("kserve.diffusion")
RANDOM_SEED_RANGE = 2**32
# The warm-up's input picture (img2video-only models): 16:9 grey, so the output has the default video shape.
WARM_UP_PICTURE = media.encode_image(Image.new("RGB", (832, 480), (128, 128, 128)))


def _memory_advice(request: GenerationRequest, in_decode: bool, vae_tiling: bool) -> str:
    """What to make smaller after an out-of-memory error, for this kind of request (and where it happened)."""
    if request.task_type in VIDEO_TASKS:
        where = f" in the VAE decode, after all {request.num_inference_steps} steps" if in_decode else ""
        tiling = "; the operator can start the server with --vae_tiling" if in_decode and not vae_tiling else ""
        return (
            f"{request.num_frames} frames of {request.video_width}x{request.video_height}{where}: "
            f"send fewer num_frames or a smaller video_width/video_height{tiling}"
        )
    return (
        f"{request.num_images} image(s) of {request.width}x{request.height}: "
        "send a smaller width/height or fewer num_images"
    )


@dataclass(frozen=True)
class Prepared:
    """A validated request with its input images loaded: ready for the queue."""

    request: GenerationRequest
    inputs: InputImages


class GenerationService:
    """One served model: loads its family once, then validates and generates requests on one accelerator
    thread, never blocking the event loop."""

    def __init__(
        self, config: ServerConfig, family: Family, outputs: OutputStore | None = None, marks: Marks | None = None
    ):
        self.name = config.model_name
        self.outputs = outputs  # --output_store: where url answers' (and jobs') files go
        self.marks = marks or NO_MARKS  # --provenance: what every output carries
        self.config = config
        self.family = family
        self.limits = Limits.from_config(config)
        self.runner: Runner | None = None
        self.inputs: InputLoader | None = None
        self.worker = GenerationWorker(config.max_queue_size)
        # Finished images and frames are encoded here, so the accelerator thread takes the next request at
        # once; with --encode_threads 0 the accelerator thread encodes them itself.
        self.encoder = (
            ThreadPoolExecutor(config.encode_threads, thread_name_prefix="encode") if config.encode_threads else None
        )
        self.lora_catalog = LoraCatalog(config.lora_dir) if config.lora_dir else None
        self.ready = False  # loaded and not draining: what readiness reports
        self.draining = False
        self._active: set[RequestControl] = set()
        metrics.QUEUE_LENGTH.set_function(lambda: self.worker.waiting)

    def load(self) -> bool:
        """Load the pipelines exactly once; ready only afterwards."""
        if self.runner is None:
            started = time.perf_counter()
            self.runner = self._load_runner()
            self.inputs = InputLoader(InputPolicy.from_config(self.config), self.limits, self.runner.size_multiples)
            if self.config.warmup:
                self._warm_up()
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

    def _load_runner(self) -> Runner:
        """The family loaded here, or over several ranks with --ulysses_degree/--ring_degree (parallel/)."""
        if ParallelPlan.from_config(self.config).enabled:
            from ..parallel.runner import start  # torch.distributed only where it is used

            return start(self.family, self.config, self._group_ready)
        return self.family.load(self.config)

    def _group_ready(self, ready: bool) -> None:
        """Told by the context-parallel group when it is lost (not ready) and when it has started again."""
        self.ready = ready and not self.draining

    def _warm_up(self) -> None:
        """One small generation per default task, on the accelerator thread, before the server is ready: it
        compiles (--compile), sets up CUDA kernels and caches, so no user request pays for that."""
        assert self.runner is not None
        runner = self.runner
        assert self.inputs is not None
        tasks = dict.fromkeys(task for task in (runner.default_task, *VIDEO_TASKS) if task in runner.tasks)
        for task in tasks:
            fields: dict[str, Any] = {"prompt": "warm-up", "task_type": task}
            if TASK_INPUTS[task]:  # img2video and edit read a picture: the grey one below
                fields["image"] = media.to_base64(WARM_UP_PICTURE)
            request = runner.check(parse_request(fields, self.limits), self.limits)
            request = fill(request, num_inference_steps=min(2, request.num_inference_steps or 2))
            inputs = NO_INPUTS
            if TASK_INPUTS[task]:  # a grey picture of the default video's shape
                request, inputs = self.inputs.prepare_now(request, WARM_UP_PICTURE)
            started = time.perf_counter()
            self.worker.call(partial(runner.generate, request, 0, inputs))
            logger.info("warm-up %s took %.1fs", task, time.perf_counter() - started)

    def stop(self) -> None:
        """Let the running generation finish, then stop the worker thread and the encode pool."""
        self.ready = False
        self.worker.shutdown()
        if self.encoder is not None:
            self.encoder.shutdown(wait=True)
        if self.outputs is not None:
            self.outputs.close()

    async def drain(self, grace_seconds: float) -> None:
        """Shutdown, first part: not ready at once, new requests refused; the admitted ones get up to
        `grace_seconds` to finish, then are stopped (queued: dropped; running: at the next step)."""
        self.draining = True
        self.ready = False
        logger.info("draining: %d request(s) in flight get up to %gs to finish", len(self._active), grace_seconds)
        deadline = time.monotonic() + grace_seconds
        while self._active and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if self._active:
            logger.warning("grace period over: stopping %d request(s)", len(self._active))
            for control in list(self._active):
                control.cancel(ShuttingDown, "the server is shutting down")
            while self._active:
                await asyncio.sleep(0.1)
        logger.info("drained")

    def loras(self) -> list[dict[str, Any]]:
        """The adapters requests may name: name, family, rank and layout (empty without --lora_dir)."""
        return self.lora_catalog.listing() if self.lora_catalog is not None else []

    def family_of(self, task: str) -> str:
        """The family that runs `task`: Wan for video beside an image model (--video_model_id), else the model's."""
        return "wan" if task in VIDEO_TASKS and self.config.video_model_id else self.family.name

    def tasks(self) -> tuple[str, ...]:
        """The task types the loaded pipelines serve (none before loading)."""
        return self.runner.tasks if self.runner else ()

    async def generate(
        self,
        instances: list[Any],
        request_id: str,
        check: Callable[[GenerationRequest], None] | None = None,
    ) -> list[GenerationResult]:
        """Generate each instance (a dict of request fields) in turn, after validating all of them and loading
        their input images; `check` adds a protocol's own rule (run on each validated request)."""
        with self._admitted():
            prepared = await self.prepare(instances, check)
            disconnected = CLIENT_DISCONNECTED.get()
            object_id = request_object_id(request_id)
            results: list[GenerationResult] = []
            for item in prepared:
                control = self.control(item.request, request_id)
                wants_urls = item.request.response_format == "url"
                upload = (object_id, sum(len(r.files) for r in results)) if wants_urls else None
                results.append(await self._generate(item, control, disconnected, upload_as=upload))
            return results

    async def prepare(
        self,
        instances: list[Any],
        check: Callable[[GenerationRequest], None] | None = None,
        local_room: bool = True,
    ) -> list[Prepared]:
        """Everything that can fail because of the request, done before any generation: validation, the
        protocol's `check`, room in the queue, fetching and decoding input images (a job is submitted only
        once this passes)."""
        assert self.inputs is not None, "load() first"
        self._refuse_when_draining()
        checked = [self._checked(instance) for instance in instances]
        for request in checked:
            if check is not None:
                check(request)
        if self.outputs is not None and any(request.response_format == "url" for request in checked):
            await self.outputs.ensure_available()  # 503 now, not after the generation, while the store is down
        prepared = []
        for request in checked:
            if local_room:  # a shared-queue job waits in Redis, not here: this replica's queue may be full
                self._check_room(request)  # before fetching and decoding its images
            loaded, inputs = await self.inputs.load(request)  # sizes may follow the input image
            prepared.append(Prepared(loaded, inputs))
        return prepared

    def control(self, request: GenerationRequest, request_id: str) -> RequestControl:
        """The request's deadline (its `timeout`, or --request_timeout, from now) and cancellation."""
        return RequestControl(request_id, request.timeout or self.config.request_timeout)

    async def run(
        self,
        prepared: Prepared,
        control: RequestControl,
        stop: asyncio.Event | None = None,
        note: str = "",
        reservation: Reservation | None = None,
        upload_as: tuple[str, int] | None = None,
    ) -> GenerationResult:
        """Generate one prepared request (a job's instance) in the queue place `reservation` holds: `stop` set
        drops it from the queue or stops it at its next step; `note` is added to its log line; with an output
        store, `upload_as` (object id, first index) uploads its files."""
        with self._admitted():
            return await self._generate(prepared, control, stop, note, reservation, upload_as)

    @contextlib.contextmanager
    def _admitted(self) -> Iterator[None]:
        """Refuse new requests while draining; count the admitted ones in flight."""
        self._refuse_when_draining()
        metrics.IN_FLIGHT.inc()
        try:
            yield
        finally:
            metrics.IN_FLIGHT.dec()

    def _refuse_when_draining(self) -> None:
        if self.draining:
            metrics.count("unknown", ShuttingDown.outcome)
            raise ShuttingDown("the server is shutting down; another replica (or a retry) will take the request")

    def _check_room(self, request: GenerationRequest) -> None:
        try:
            self.worker.check_room()
        except ServingError as exc:
            metrics.count(request.task_type or "unknown", exc.outcome)
            raise

    def default_fps(self, fields: dict[str, Any]) -> int:
        """The fps of a video request with `fields` that names none: the served model variant's default."""
        assert self.runner is not None
        probe = {name: fields[name] for name in ("prompt", "task_type", "image", "image_url") if name in fields}
        return self.runner.check(parse_request(probe, self.limits), self.limits).fps

    def _checked(self, instance: Any) -> GenerationRequest:
        """The validated request (family rules applied, response_format resolved); a RequestError is counted as
        invalid."""
        assert self.runner is not None
        try:
            request = self.runner.check(parse_request(instance, self.limits), self.limits)
            answer = request.response_format or self.config.default_response_format
            if answer == "url" and self.outputs is None:
                raise RequestError(
                    "response_format",
                    '"url" needs --output_store s3://bucket/prefix on the server (an S3-compatible store for the '
                    'files); this one answers "b64_json" only, got "url"',
                )
            return fill(request, response_format=answer)
        except RequestError:
            task = instance.get("task_type") if isinstance(instance, dict) else None
            metrics.count(task if task in TASK_TYPES else "unknown", "invalid")
            raise

    async def _generate(
        self,
        prepared: Prepared,
        control: RequestControl,
        stop: asyncio.Event | None,
        note: str = "",
        reservation: Reservation | None = None,
        upload_as: tuple[str, int] | None = None,
    ) -> GenerationResult:
        assert self.runner is not None and prepared.request.task_type is not None
        request, request_id = prepared.request, control.request_id
        task = request.task_type
        seed = request.seed if request.seed is not None else secrets.randbelow(RANDOM_SEED_RANGE)
        self._active.add(control)
        marking = self._marking(request, seed, prepared.inputs)
        job = partial(self._run, request, seed, prepared.inputs, marking)
        try:
            timed = await self.worker.run(job, control, stop, reservation)
        except ServingError as exc:
            metrics.count(task, exc.outcome)
            logger.warning("request=%s task=%s %s: %s", request_id, task, exc.outcome, exc)
            raise
        except RequestError:  # found only on the accelerator thread (an adapter that does not fit the model)
            metrics.count(task, "invalid")
            raise
        except AcceleratorOutOfMemory as exc:
            metrics.count(task, OutOfMemory.outcome)
            logger.error("request=%s task=%s out of memory: %s", request_id, task, exc)
            raise OutOfMemory(
                f"out of memory generating {_memory_advice(request, exc.in_decode, self.config.vae_tiling)} "
                "(the server has freed the memory and "
                "keeps serving)"
            ) from None
        except Exception as exc:
            metrics.count(task, "error")
            logger.exception("request %s failed during generation", request_id)
            raise GenerationFailed(
                f"generation failed ({type(exc).__name__}); the server log has details under request id {request_id}"
            ) from None
        finally:
            self._active.discard(control)
        try:
            if self.encoder is None:
                result = timed.value  # encoded (and marked) on the accelerator thread
            else:
                encode = partial(encode_result, request, seed, timed.value, self.config.png_compress_level, marking)
                result = await asyncio.get_running_loop().run_in_executor(self.encoder, encode)
        except MarkingFailed as exc:
            metrics.count(task, exc.outcome)
            logger.error("request=%s task=%s %s", request_id, task, exc)
            raise
        if control.cache is not None:
            result = replace(result, cache=CacheReport(*control.cache))
            note += f" cache_skipped={result.cache.skipped_fraction:.0%}"
        self._record(request, control, timed.queue_wait, timed.run_time, result)
        if request.loras:
            note += " loras=" + ",".join(f"{choice.name}:{choice.scale:g}" for choice in request.loras)
        logger.info(
            "request=%s%s task=%s size=%dx%d steps=%d %s scheduler=%s seed=%d queue_wait=%.3fs generation=%.3fs",
            request_id,
            note,
            task,
            result.width,
            result.height,
            request.num_inference_steps,
            f"frames={result.video.num_frames}" if result.video else f"images={len(result.files)}",
            request.scheduler,
            seed,
            timed.queue_wait,
            timed.run_time,
        )
        if upload_as is not None and self.outputs is not None:  # off the accelerator: the next request runs meanwhile
            result = await deliver(result, self.outputs, *upload_as)
        return result

    def _marking(self, request: GenerationRequest, seed: int, inputs: InputImages) -> Marking:
        """The marks of one request's files (its `provenance`, else the server's) and what they claim."""
        assert request.task_type is not None
        asked = parse_marks(request.provenance) if request.provenance else self.marks.marks
        marks = asked & self.marks.marks  # the request's field was checked to be within the server's
        family = self.family_of(request.task_type)
        return self.marks.marking(marks, self.name, family, request.task_type, seed, inputs.ingredients)

    def _run(
        self, request: GenerationRequest, seed: int, inputs: InputImages, marking: Marking, control: RequestControl
    ) -> Any:
        """The accelerator-thread job: generate, measuring the peak accelerator memory (and encode, with
        --encode_threads 0)."""
        assert self.runner is not None
        on_cuda = self.config.device != "cpu" and torch.cuda.is_available()
        if on_cuda:
            torch.cuda.reset_peak_memory_stats()
        activation = self.runner.use_loras(request)
        if activation is not None:
            metrics.LORA_LOADS.inc(len(activation.loaded))
            metrics.LORA_CACHE_HITS.inc(len(activation.cached))
        output = self.runner.generate(request, seed, inputs, control)
        metrics.PEAK_MEMORY.set(torch.cuda.max_memory_allocated() if on_cuda else 0)
        if self.encoder is None:
            return encode_result(request, seed, output, self.config.png_compress_level, marking)
        return output

    @staticmethod
    def _record(
        request: GenerationRequest,
        control: RequestControl,
        queue_wait: float,
        run_time: float,
        result: GenerationResult,
    ) -> None:
        task = request.task_type or "unknown"
        metrics.count(task, "ok")
        metrics.QUEUE_WAIT.labels(task=task).observe(queue_wait)
        metrics.GENERATION_TIME.labels(task=task).observe(run_time)
        metrics.STEPS.labels(task=task).inc(control.steps)
        metrics.STEPS_PER_SECOND.set(control.steps / run_time if run_time > 0 else 0)
        if result.cache is not None:
            metrics.CACHE_SKIPPED.labels(task=task).inc(result.cache.skipped_layers)
            metrics.CACHE_TOTAL.labels(task=task).inc(result.cache.total_layers)
        if result.video is not None:
            metrics.VIDEO_FRAMES.inc(result.video.num_frames)
        else:
            metrics.IMAGES.inc(len(result.files))
