"""Wan variants in-process: loading each folder, the shared modules of TI2V-5B's two tasks, contradicting
folders, --vae_tiling on the Wan VAEs, an out-of-memory error in the VAE decode, and the device modes (GPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from kserve_diffusion.api.inputs import NO_INPUTS, InputImages
from kserve_diffusion.api.request import DEFAULT_LIMITS, parse_request
from kserve_diffusion.config import defaults
from kserve_diffusion.errors import ConfigError
from kserve_diffusion.pipelines import wan
from kserve_diffusion.pipelines.base import DecodeOutOfMemory
from PIL import Image

# tiny model key -> (variant, pipeline class, its tasks)
FOLDERS = {
    "wan": ("wan2.1-t2v", "WanPipeline", ("text2video",)),
    "wan_i2v": ("wan2.1-i2v", "WanImageToVideoPipeline", ("img2video",)),
    "wan22_t2v": ("wan2.2-t2v-a14b", "WanPipeline", ("text2video",)),
    "wan22_i2v": ("wan2.2-i2v-a14b", "WanImageToVideoPipeline", ("img2video",)),
    "wan22_ti2v": ("wan2.2-ti2v-5b", "WanPipeline", ("text2video", "img2video")),
}


def generate(runner: wan.WanRunner, task: str, size: tuple[int, int] = (96, 64), **fields: object) -> np.ndarray:
    """A 5-frame video of `task` at `size` (img2video from a grey picture of that size)."""
    width, height = size
    request = {"prompt": "a fox", "task_type": task, "num_frames": 5, "num_inference_steps": 2, **fields}
    request.update(video_width=width, video_height=height)
    inputs = NO_INPUTS
    if task == "img2video":
        request["image"] = "x"
        inputs = InputImages(Image.new("RGB", size, (120, 90, 60)))
    checked = runner.check(parse_request(request, DEFAULT_LIMITS), DEFAULT_LIMITS)
    return runner.generate(checked, 1, inputs).frames


@pytest.mark.parametrize("key", FOLDERS)
def test_each_folder_loads_as_its_variant(tiny_models: dict[str, Path], key: str) -> None:
    variant, class_name, tasks = FOLDERS[key]
    runner = wan.load(defaults(model_type="wan", model_id=str(tiny_models[key])))
    assert runner.variant_name == variant and runner.tasks == tasks
    assert type(runner.pipeline).__name__ == class_name
    modules = {task: pipeline.components for task, pipeline in runner.pipelines.items()}
    if len(modules) == 2:  # TI2V-5B: the image-to-video pipeline is made of the same modules, loaded once
        assert modules["img2video"]["transformer"] is modules["text2video"]["transformer"]
        assert modules["img2video"]["vae"] is modules["text2video"]["vae"]
    if "a14b" in variant:
        assert (
            runner.pipeline.transformer_2 is not None
            and runner.pipeline.transformer_2 is not runner.pipeline.transformer
        )
    for task in tasks:
        assert generate(runner, task).shape == (5, 64, 96, 3)


def test_folders_that_are_not_wan_or_contradict_themselves_are_startup_errors(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="is a StableDiffusionXLPipeline, not a Wan text- or image-to-video pipeline"):
        wan.load(defaults(model_type="wan", model_id=str(tiny_models["sdxl"])))
    broken = tmp_path / "i2v-without-encoder"
    shutil.copytree(tiny_models["wan_i2v"], broken)
    index = json.loads((broken / "model_index.json").read_text())
    index["image_encoder"] = [None, None]
    (broken / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ConfigError, match="an image-to-video transformer with image_dim needs the image_encoder"):
        wan.load(defaults(model_type="wan", model_id=str(broken)))
    with pytest.raises(ConfigError, match="--model_id: .* is not a diffusers model folder"):
        wan.load(defaults(model_type="wan", model_id=str(tmp_path / "missing")))


@pytest.mark.parametrize("key", ["wan", "wan22_ti2v"])  # the Wan2.1 VAE and the Wan2.2 one
def test_vae_tiling_decodes_wan_videos_in_tiles(tiny_models: dict[str, Path], key: str) -> None:
    tiled = wan.load(defaults(model_type="wan", model_id=str(tiny_models[key]), vae_tiling=True))
    plain = wan.load(defaults(model_type="wan", model_id=str(tiny_models[key])))
    assert tiled.pipeline.vae.use_tiling and not plain.pipeline.vae.use_tiling
    calls = []
    decode = tiled.pipeline.vae.tiled_decode
    tiled.pipeline.vae.tiled_decode = lambda *args, **kwargs: calls.append(1) or decode(*args, **kwargs)
    size = (320, 288)  # over the VAE's 256-pixel tile: decoded as overlapping tiles, blended
    with_tiles, without = generate(tiled, "text2video", size), generate(plain, "text2video", size)
    assert calls and with_tiles.shape == without.shape == (5, 288, 320, 3)
    difference = np.abs(with_tiles.astype(np.int16) - without.astype(np.int16))
    assert difference.mean() < 8, difference.mean()  # the same video up to the tiles' seams


def test_out_of_memory_in_the_vae_decode_is_told_apart(tiny_models: dict[str, Path]) -> None:
    runner = wan.load(defaults(model_type="wan", model_id=str(tiny_models["wan"])))

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB")

    runner.pipeline.vae.decode = out_of_memory
    with pytest.raises(DecodeOutOfMemory, match="Tried to allocate 40.00 GiB"):
        generate(runner, "text2video")
    del runner.pipeline.vae.decode  # the class's method again
    assert generate(runner, "text2video").shape == (5, 64, 96, 3)

    def step_out_of_memory(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory in a step")

    transformer_forward = runner.pipeline.transformer.forward
    runner.pipeline.transformer.forward = step_out_of_memory
    with pytest.raises(torch.OutOfMemoryError) as raised:
        generate(runner, "text2video")
    assert not isinstance(raised.value, DecodeOutOfMemory)  # during the steps: an ordinary out-of-memory error
    runner.pipeline.transformer.forward = transformer_forward


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["cuda", "enable_model_cpu_offload", "enable_sequential_cpu_offload"])
@pytest.mark.parametrize("key", ["wan_i2v", "wan22_i2v", "wan22_ti2v"])
def test_gpu_wan_variants_generate_in_every_device_mode(tiny_models: dict[str, Path], key: str, mode: str) -> None:
    runner = wan.load(defaults(model_type="wan", model_id=str(tiny_models[key]), device=mode, dtype="bfloat16"))
    for task in runner.tasks:  # both experts of A14B, and TI2V-5B's two pipelines on the same hooked modules
        assert generate(runner, task, num_inference_steps=4).shape == (5, 64, 96, 3)
