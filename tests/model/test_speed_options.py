"""Speed options in-process on the tiny FLUX and Wan: each cache loads, generates and reports what it skipped;
an attention backend that runs here and one that cannot; int8 and fp8 weights; group offloading (with the CPU
standing in for the GPU); and the same options on a real GPU (`gpu` tests)."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from kserve_diffusion.api.inputs import NO_INPUTS, InputImages
from kserve_diffusion.api.request import DEFAULT_LIMITS, parse_request
from kserve_diffusion.config import defaults
from kserve_diffusion.errors import ConfigError
from kserve_diffusion.pipelines import devices, flux, wan
from kserve_diffusion.testing import tiny
from PIL import Image

from benchmarks.gpu import RecordingControl

WAN_CLIP = {"task_type": "text2video", "video_width": 64, "video_height": 64, "num_frames": 5}
FLUX_IMAGE = {"height": 64, "width": 64}


def load(tiny_models: dict[str, Path], key: str, **settings: Any) -> Any:
    """The tiny `key` model loaded as the server loads it."""
    family = "flux" if key == "flux" else "wan"
    config = defaults(model_type=family, model_id=str(tiny_models[key]), **settings)
    return (flux if family == "flux" else wan).load(config)


def generate(
    runner: Any, steps: int = 6, inputs: InputImages = NO_INPUTS, **fields: Any
) -> tuple[np.ndarray, RecordingControl]:
    """One generation's pixels (an image, or a video's frames) and what its control was told."""
    shape = FLUX_IMAGE if runner.family == "flux" else WAN_CLIP
    request = parse_request({"prompt": "a fox", "num_inference_steps": steps, **shape, **fields}, DEFAULT_LIMITS)
    tally = RecordingControl()
    output = runner.generate(runner.check(request, DEFAULT_LIMITS), 3, inputs, tally)
    return np.asarray(output[0] if isinstance(output, list) else output.frames), tally


# (model, settings): a threshold of 10 makes First-Block-Cache and MagCache skip whatever they may even with
# random weights, which change too much between steps for their default thresholds.
CACHES = [
    ("flux", {"cache": "first_block", "cache_threshold": 10.0}),
    ("wan", {"cache": "first_block", "cache_threshold": 10.0}),
    ("flux", {"cache": "taylorseer", "cache_interval": 2, "cache_start_step": 2}),
    ("wan", {"cache": "taylorseer", "cache_interval": 2, "cache_start_step": 2}),
    ("flux", {"cache": "mag", "cache_threshold": 10.0, "cache_start_step": 1}),
    ("wan", {"cache": "mag", "cache_threshold": 10.0, "cache_start_step": 1, "cache_mag_ratios": "1.0,0.95,0.9"}),
]


@pytest.mark.parametrize(("key", "settings"), CACHES, ids=[f"{k}-{s['cache']}" for k, s in CACHES])
def test_each_cache_generates_and_reports_what_it_skipped(
    tiny_models: dict[str, Path], key: str, settings: dict
) -> None:
    cached, plain = load(tiny_models, key, **settings), load(tiny_models, key)
    pixels, tally = generate(cached)
    again, tally_again = generate(cached)
    assert tally.cache is not None and 0 < tally.cache[0] < tally.cache[1], tally.cache
    assert np.array_equal(pixels, again) and tally_again.cache == tally.cache  # no state leaks between requests
    uncached, none = generate(plain)
    assert none.cache is None and pixels.shape == uncached.shape
    # the total is what the uncached run computes: attention layers x denoiser calls (6 steps; Wan: x2, CFG)
    transformer = plain.pipelines["text2img" if key == "flux" else "text2video"].transformer
    layers = sum(1 for m in transformer.modules() if type(m).__name__.endswith("Attention"))
    assert tally.cache[1] == layers * 6 * (2 if key == "wan" else 1)


def test_mag_cache_follows_each_requests_step_count(tiny_models: dict[str, Path]) -> None:
    runner = load(tiny_models, "flux", cache="mag", cache_threshold=10.0, cache_start_step=1)
    for steps in (6, 10, 6):
        _, tally = generate(runner, steps=steps)
        assert tally.cache is not None and tally.cache[1] == 2 * steps  # two attention layers in the tiny FLUX


def test_a_cache_runs_on_both_wan22_experts_and_on_flux_image_tasks(tiny_models: dict[str, Path]) -> None:
    experts = load(tiny_models, "wan22_t2v", cache="first_block", cache_threshold=10.0)
    _, tally = generate(experts, steps=8)
    assert tally.cache is not None and tally.cache[0] > 0
    assert tally.cache[1] == 4 * 8 * 2  # 4 attention layers per expert call, 8 steps, CFG
    runner = load(tiny_models, "flux", cache="first_block", cache_threshold=10.0)
    picture = InputImages(Image.new("RGB", (64, 64), (150, 60, 40)))
    _, tally = generate(runner, steps=8, inputs=picture, image="x", strength=0.5)
    assert tally.cache is not None and tally.cache[1] == 2 * 4  # img2img runs steps x strength


def test_cache_with_regional_compile_generates(tiny_models: dict[str, Path]) -> None:
    runner = load(tiny_models, "wan", cache="first_block", cache_threshold=10.0, compile="regional")
    eager = load(tiny_models, "wan", cache="first_block", cache_threshold=10.0)
    (compiled, tally), (expected, eager_tally) = generate(runner, steps=4), generate(eager, steps=4)
    assert tally.cache == eager_tally.cache and np.abs(compiled.astype(int) - expected).max() <= 2


def test_attention_backends_are_checked_at_startup(tiny_models: dict[str, Path]) -> None:
    native, default = load(tiny_models, "wan", attention_backend="native"), load(tiny_models, "wan")
    assert np.array_equal(generate(native)[0], generate(default)[0])  # PyTorch's SDPA either way on a CPU
    for backend, needs in (("flash", "flash-attn"), ("flash3", "FlashAttention-3"), ("efficient", "CUDA")):
        with pytest.raises(
            ConfigError, match=rf"--attention_backend {backend}: cannot run on cpu .* it needs .*{needs}"
        ):
            load(tiny_models, "flux", attention_backend=backend)


@pytest.mark.parametrize(("mode", "weights"), [("int8", "Int8Tensor"), ("fp8", "Float8Tensor")])
def test_int8_and_fp8_weights_load_and_generate_on_a_cpu(tiny_models: dict[str, Path], mode: str, weights: str) -> None:
    runner = load(tiny_models, "flux", quantize=mode)
    base = runner.pipelines["text2img"]
    assert type(base.transformer.transformer_blocks[0].attn.to_q.weight).__name__ == weights
    assert type(base.text_encoder_2.encoder.block[0].layer[0].SelfAttention.q.weight).__name__ == "Int8Tensor"
    clip_weights = {type(m.weight).__name__ for m in base.text_encoder.modules() if isinstance(m, torch.nn.Linear)}
    assert clip_weights == {"Parameter"}  # the CLIP encoder is left as it is
    quantized, _ = generate(runner)
    plain, _ = generate(load(tiny_models, "flux"))
    assert quantized.shape == plain.shape and np.abs(quantized.astype(int) - plain).mean() < 40  # close, not equal
    experts = load(tiny_models, "wan22_t2v", quantize=mode)
    for expert in (experts.pipeline.transformer, experts.pipeline.transformer_2):
        assert type(expert.blocks[0].attn1.to_q.weight).__name__ == weights
    assert generate(experts, steps=4)[0].shape == (5, 64, 64, 3)


def test_group_offload_generates_what_the_unoffloaded_model_does(monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    # The CPU stands in for the GPU: the same block-level hooks, moving to the same device, without streams.
    monkeypatch.setitem(
        devices.PLACEMENTS, "group_offload", functools.partial(devices.group_offload, onload="cpu", streams=False)
    )
    offloaded = flux.assemble(tiny.build_flux(), defaults(device="group_offload"), "dev")
    plain = flux.assemble(tiny.build_flux(), defaults(), "dev")
    assert _is_group_offload_enabled(offloaded.pipelines["text2img"].transformer)
    picture = InputImages(Image.new("RGB", (64, 64), (150, 60, 40)))
    for fields, inputs in (({}, NO_INPUTS), ({"image": "x", "strength": 0.5}, picture)):  # modules shared by tasks
        assert np.array_equal(
            generate(offloaded, inputs=inputs, **fields)[0], generate(plain, inputs=inputs, **fields)[0]
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    "settings",
    [
        {"device": "group_offload"},
        {"quantize": "nf4"},
        {"quantize": "fp8", "compile": "regional"},
        {"quantize": "int8"},
        {"cache": "first_block", "cache_threshold": 10.0, "compile": "regional"},
        {"attention_backend": "native"},
        {"attention_backend": "cudnn"},
    ],
    ids=lambda settings: "+".join(f"{k}={v}" for k, v in settings.items()),
)
def test_gpu_speed_options_generate(tiny_models: dict[str, Path], settings: dict) -> None:
    if settings.get("quantize") == "nf4" and importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes is not installed (tools/gpu-wheels.sh brings it with WITH_NF4=1)")
    for key in ("flux", "wan"):
        runner = load(tiny_models, key, **{"device": "cuda", "dtype": "bfloat16", **settings})
        pixels, tally = generate(runner)
        assert pixels.size and (tally.cache is not None) == ("cache" in settings)
