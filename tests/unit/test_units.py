"""Tier-1 units: schema messages, scheduler registry, v1/v2 adapters, media, error isolation."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace

import numpy as np
import pytest
from kserve.protocol.infer_type import InferInput, InferRequest
from kserve_diffusion import media
from kserve_diffusion.api.request import DEFAULT_LIMITS, GenerationRequest, Limits, parse_request
from kserve_diffusion.api.request import TASK_TYPES as ALL_TASKS
from kserve_diffusion.api.rules import resolve_task
from kserve_diffusion.config import defaults
from kserve_diffusion.errors import GenerationFailed, RequestError
from kserve_diffusion.pipelines import Family
from kserve_diffusion.pipelines.schedulers import SDXL_SCHEDULERS, build_scheduler
from kserve_diffusion.pipelines.sdxl import SDXLRunner
from kserve_diffusion.runtime.control import RequestControl
from kserve_diffusion.runtime.service import GenerationService
from kserve_diffusion.runtime.worker import GenerationWorker
from kserve_diffusion.server import v1, v2_inputs
from kserve_diffusion.server.model import DiffusionModel
from kserve_diffusion.testing.tiny import build_tokenizer

SDXL_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "num_train_timesteps": 1000,
}


def test_defaults_follow_seed_000() -> None:
    request = parse_request({"prompt": "x"}, DEFAULT_LIMITS)
    assert (request.num_inference_steps, request.scheduler) == (None, None)  # the family's default
    sdxl = SDXLRunner(None, None, None, None).check(request, DEFAULT_LIMITS)  # type: ignore[arg-type]
    assert (sdxl.height, sdxl.width, sdxl.num_inference_steps, sdxl.refiner_inference_steps) == (1024, 1024, 25, 50)
    assert (sdxl.guidance_scale, sdxl.num_images, sdxl.scheduler) == (7.5, 1, "DDIM")
    assert request.seed is None and request.high_noise_frac is None and request.strength is None
    # strength depends on the task: 0.3 (seed 000's default), 1.0 for inpainting
    assert resolve_task(request, "text2img", ALL_TASKS).strength == 0.3
    assert resolve_task(request.model_copy(update={"image": "x"}), "text2img", ALL_TASKS).strength == 0.3
    assert resolve_task(request.model_copy(update={"image": "x", "mask": "y"}), "text2img", ALL_TASKS).strength == 1.0


def test_limits_come_from_the_context() -> None:
    strict = replace(DEFAULT_LIMITS, max_num_images=1, max_steps=10, max_side=512)
    with pytest.raises(RequestError, match="num_inference_steps: must be between 1 and 10, got 11"):
        parse_request({"prompt": "x", "num_inference_steps": 11}, strict)
    with pytest.raises(RequestError, match="num_images: must be between 1 and 1, got 2"):
        parse_request({"prompt": "x", "num_images": 2}, strict)
    with pytest.raises(RequestError, match="height: must be between 64 and 512, got 1040"):
        parse_request({"prompt": "x", "height": 1040}, strict)
    # The model's own defaults are left to the family rules, which check the values a request really uses: a
    # video side's default must not fail an image request on a server with a small --max_side.
    assert parse_request({"prompt": "x", "height": 64, "width": 64}, strict).video_width == 704


def test_several_errors_are_reported_together() -> None:
    with pytest.raises(RequestError) as caught:
        parse_request({"prompt": "", "num_images": 0, "colour": "red"}, DEFAULT_LIMITS)
    message = str(caught.value)
    assert "prompt:" in message and "num_images:" in message and "colour: unknown field" in message


def test_long_prompt_is_refused_without_echoing_it() -> None:
    with pytest.raises(RequestError, match="at most 10000 characters, got 20000 characters"):
        parse_request({"prompt": "x" * 20_000}, DEFAULT_LIMITS)


@pytest.mark.parametrize("name", list(SDXL_SCHEDULERS))
def test_each_scheduler_name_builds_a_fresh_instance(name: str) -> None:
    first = build_scheduler(SDXL_SCHEDULERS, name, SDXL_SCHEDULER_CONFIG)
    second = build_scheduler(SDXL_SCHEDULERS, name, SDXL_SCHEDULER_CONFIG)
    assert first is not second
    assert first.config.beta_schedule == "scaled_linear"
    first.set_timesteps(4)


def test_karras_variant_uses_karras_sigmas() -> None:
    assert build_scheduler(SDXL_SCHEDULERS, "KarrasDPM", SDXL_SCHEDULER_CONFIG).config.use_karras_sigmas


def test_v1_instances_shapes() -> None:
    assert v1.read_instances(b'{"instances": [{"prompt": "a"}]}', 4) == [{"prompt": "a"}]
    assert v1.read_instances({"input": {"prompt": "a"}}, 4) == [{"prompt": "a"}]
    with pytest.raises(RequestError, match="instances: must hold between 1 and 2"):
        v1.read_instances({"instances": [{}, {}, {}]}, 2)
    with pytest.raises(RequestError, match="body: malformed JSON"):
        v1.read_instances(b"{", 4)


def test_v2_tensors_from_raw_grpc_bytes_and_typed_values() -> None:
    prompt = InferInput("prompt", [1], "BYTES")
    prompt._raw_data = protocols_serialized(b"a red fox")
    seed = InferInput("seed", [1], "UINT8", data=[7])
    scale = InferInput("guidance_scale", [1], "FP64", data=[2.5])
    request = InferRequest("sdxl", [prompt, seed, scale], parameters={"binary_data_output": False, "width": 64})
    assert v2_inputs.read_instance(request) == {"prompt": "a red fox", "seed": 7, "guidance_scale": 2.5, "width": 64}


def protocols_serialized(value: bytes) -> bytes:
    from kserve.protocol.infer_type import serialize_byte_tensor

    return serialize_byte_tensor(np.array([value], dtype=object)).item()


def test_v2_non_utf8_bytes_are_400() -> None:
    prompt = InferInput("prompt", [1], "BYTES", data=[b"\xff\xfe"])
    with pytest.raises(RequestError, match="prompt: BYTES data is not UTF-8 text"):
        v2_inputs.read_instance(InferRequest("sdxl", [prompt]))


def test_png_encoding_round_trips() -> None:
    from PIL import Image

    from tests.helpers import decode_data_url, open_image

    data = media.encode_image(Image.new("RGB", (8, 4), (255, 0, 0)))
    mime, decoded = decode_data_url(media.data_url(data, media.content_type()))
    assert mime == "image/png" and open_image(decoded).getpixel((0, 0)) == (255, 0, 0)


def test_tokenizer_is_local_and_character_level() -> None:
    tokenizer = build_tokenizer()
    ids = tokenizer("a fox").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert len(ids) == 2 + 4  # a, f, o, x


def test_worker_is_one_fifo_thread_that_survives_errors() -> None:
    worker = GenerationWorker(max_queue=8)
    names: list[str] = []
    order: list[int] = []

    def job(i: int) -> int:
        names.append(threading.current_thread().name)
        order.append(i)
        if i == 1:
            raise RuntimeError("boom")
        return i

    async def main() -> list:
        runs = (worker.run(lambda _, i=i: job(i), RequestControl(f"r{i}", 60)) for i in range(4))
        return await asyncio.gather(*runs, return_exceptions=True)

    results = asyncio.run(main())
    worker.shutdown()
    assert order == [0, 1, 2, 3]
    assert len(set(names)) == 1
    assert isinstance(results[1], RuntimeError)
    assert [r.value for r in results if not isinstance(r, Exception)] == [0, 2, 3]


class FailingOnceRunner:
    """A runner whose first generation raises, as an out-of-memory or driver error would."""

    tasks = ("text2img",)
    default_task = "text2img"
    size_multiples = {"text2img": 8}
    schedulers = SDXL_SCHEDULERS

    def __init__(self) -> None:
        self.calls = 0

    def check(self, request: GenerationRequest, limits: Limits) -> GenerationRequest:
        return resolve_task(request, "text2img", self.tasks)

    def use_loras(self, request: GenerationRequest) -> None:
        return None

    def generate(self, request: GenerationRequest, seed: int, inputs: object = None, control: object = None) -> list:
        from PIL import Image

        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("secret internal detail /opt/x.py line 3")
        return [Image.new("RGB", (request.width, request.height))]


def test_internal_failure_is_short_and_the_next_request_succeeds() -> None:
    family = Family("fake", "fake", load=lambda config: FailingOnceRunner())
    model = DiffusionModel(GenerationService(defaults(model_name="sdxl"), family))
    model.load()
    body = {"instances": [{"prompt": "x", "height": 64, "width": 64}]}

    async def main() -> tuple:
        with pytest.raises(GenerationFailed) as caught:
            await model.predict(body, {"x-request-id": "r1"})
        return str(caught.value), await model.predict(body, {})

    message, answer = asyncio.run(main())
    model.stop()
    assert "RuntimeError" in message and "r1" in message and "secret" not in message
    assert len(answer["predictions"][0]["images"]) == 1
