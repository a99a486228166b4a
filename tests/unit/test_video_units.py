"""Video units: Wan frame counts, flow shift, variant defaults and rules, img2video sizes, MP4 encoding."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
from kserve_diffusion import media
from kserve_diffusion.api.request import DEFAULT_LIMITS, GenerationRequest, parse_request
from kserve_diffusion.api.rules import resolve_task, video_output_size
from kserve_diffusion.errors import RequestError
from kserve_diffusion.pipelines.wan import WanRunner, frame_count_problem
from kserve_diffusion.pipelines.wan_variants import VARIANTS

from tests.helpers import mp4_facts


def _request(**fields: object) -> GenerationRequest:
    return parse_request({"prompt": "x", **fields}, DEFAULT_LIMITS)


def test_frame_counts_and_flow_shift() -> None:
    assert frame_count_problem(81) is None and frame_count_problem(1) is None
    assert "25 or 29" in frame_count_problem(26)
    runner = WanRunner({}, "wan2.1-t2v", flow_shift=None)
    assert runner.shift_for(_request(video_height=480, video_width=832)) == 3.0
    assert runner.shift_for(_request(video_height=720, video_width=1280)) == 5.0
    assert WanRunner({}, "wan2.1-t2v", flow_shift=4.0).shift_for(_request(video_height=720, video_width=1280)) == 4.0
    # Wan2.2 variants have their authors' shift whatever the size; --flow_shift still wins.
    assert WanRunner({}, "wan2.2-t2v-a14b", flow_shift=None).shift_for(_request(video_height=480)) == 12.0
    assert WanRunner({}, "wan2.2-ti2v-5b", flow_shift=None).shift_for(_request(video_height=480)) == 5.0
    assert WanRunner({}, "wan2.2-ti2v-5b", flow_shift=7.0).shift_for(_request(video_height=480)) == 7.0


# The defaults each variant fills in for a request that names only its task (docs/video.md's table).
VARIANT_DEFAULTS = {
    "wan2.1-t2v": ("text2video", 25, 25, 8, 6.0, None, (704, 480)),
    "wan2.1-i2v": ("img2video", 40, 81, 16, 5.0, None, "480p"),
    "wan2.2-t2v-a14b": ("text2video", 40, 81, 16, 4.0, 3.0, (1280, 720)),
    "wan2.2-i2v-a14b": ("img2video", 40, 81, 16, 3.5, 3.5, "720p"),
    "wan2.2-ti2v-5b": ("text2video", 50, 81, 24, 5.0, None, (1280, 704)),  # 121 frames, lowered to --max_frames
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_fills_in_its_defaults(variant: str) -> None:
    task, steps, frames, fps, guidance, guidance_2, size = VARIANT_DEFAULTS[variant]
    runner = WanRunner({}, variant, flow_shift=None)
    fields = {"task_type": task} if task == "text2video" else {"image": "aGVsbG8="}
    checked = runner.check(_request(**fields), DEFAULT_LIMITS)
    assert checked.task_type == task and runner.default_task == task
    assert (checked.num_inference_steps, checked.num_frames, checked.fps) == (steps, frames, fps)
    assert (checked.video_guidance_scale, checked.video_guidance_scale_2) == (guidance, guidance_2)
    if task == "text2video":
        assert (checked.video_width, checked.video_height) == size
    else:
        assert checked.video_resolution == size
    given = runner.check(_request(**fields, num_frames=9, fps=12, num_inference_steps=3), DEFAULT_LIMITS)
    assert (given.num_frames, given.fps, given.num_inference_steps) == (9, 12, 3)  # what the client sends wins
    raised = replace(DEFAULT_LIMITS, max_frames=121, max_video_pixels=121 * 1280 * 720)
    if variant == "wan2.2-ti2v-5b":
        assert runner.check(_request(task_type="text2video"), raised).num_frames == 121


@pytest.mark.parametrize(
    ("variant", "fields", "message"),
    [
        ("wan2.1-t2v", {"video_guidance_scale_2": 3.0}, "video_guidance_scale_2: applies to the Wan2.2 A14B models"),
        ("wan2.2-ti2v-5b", {"video_guidance_scale_2": 3.0}, "not Wan2.2 text/image-to-video 5B, got 3.0"),
        ("wan2.1-t2v", {"image": "aGVsbG8="}, "image: asks for img2img, which this server does not serve"),
        (
            "wan2.1-t2v",
            {"task_type": "img2video", "image": "aGVsbG8="},
            "this server serves text2video, got 'img2video'",
        ),
        ("wan2.1-i2v", {}, "image: task_type img2video needs image or image_url"),
        ("wan2.1-i2v", {"task_type": "text2video"}, "this server serves img2video, got 'text2video'"),
        ("wan2.2-ti2v-5b", {"task_type": "text2video", "video_width": 112}, "multiple of 32 (e.g. 96 or 128), got 112"),
        ("wan2.2-ti2v-5b", {"image": "aGVsbG8=", "video_height": 80}, "video_height: must be a multiple of 32"),
        ("wan2.2-ti2v-5b", {"task_type": "text2video", "video_resolution": "720p"}, "applies to img2video only"),
        (
            "wan2.2-ti2v-5b",
            {"image": "aGVsbG8=", "height": 64},
            "height: does not apply to img2video (use video_height)",
        ),
        ("wan2.2-ti2v-5b", {"image": "aGVsbG8=", "num_images": 2}, "img2video makes one video per request, got 2"),
    ],
)
def test_fields_a_variant_cannot_use_are_400(variant: str, fields: dict, message: str) -> None:
    with pytest.raises(RequestError, match=re.escape(message)):
        WanRunner({}, variant, flow_shift=None).check(_request(**fields), DEFAULT_LIMITS)


def test_image_tasks_name_video_fields_as_video_only() -> None:
    with pytest.raises(RequestError, match="video_resolution: applies to text2video and img2video only"):
        resolve_task(_request(video_resolution="480p"), "text2img", ("text2img",))


def test_an_image_goes_to_img2img_unless_video_fields_or_no_img2img() -> None:
    combined = ("text2img", "img2img", "inpaint", "text2video", "img2video")
    assert resolve_task(_request(image="aGVsbG8="), "text2img", combined).task_type == "img2img"
    assert resolve_task(_request(image="aGVsbG8=", num_frames=9), "text2img", combined).task_type == "img2video"
    assert resolve_task(_request(image="aGVsbG8="), "img2video", ("img2video",)).task_type == "img2video"
    assert resolve_task(_request(), "text2video", ("text2video", "img2video")).task_type == "text2video"


@pytest.mark.parametrize(
    ("source", "fields", "multiple", "size"),
    [
        ((1600, 900), {"video_resolution": "480p"}, 16, (832, 464)),  # 16:9 at 832x480's area
        ((1600, 900), {"video_resolution": "720p"}, 16, (1280, 720)),
        ((1600, 900), {"video_resolution": "720p"}, 32, (1280, 704)),  # TI2V-5B: multiples of 32
        ((900, 1600), {"video_resolution": "480p"}, 16, (464, 832)),  # portrait stays portrait
        ((1000, 1000), {"video_resolution": "480p"}, 16, (624, 624)),
        ((1600, 900), {"video_width": 640}, 16, (640, 352)),  # one side given: the other follows the picture
        ((1600, 900), {"video_height": 320, "video_width": 320}, 16, (320, 320)),  # both given: as given
    ],
)
def test_img2video_size_follows_the_picture(source: tuple, fields: dict, multiple: int, size: tuple) -> None:
    assert video_output_size(source, _request(task_type="img2video", **fields), DEFAULT_LIMITS, multiple) == size


def test_img2video_derived_side_out_of_range_is_400() -> None:
    request = _request(task_type="img2video", video_width=2048)
    with pytest.raises(RequestError, match=r"video_height: follows the input image's 100x1000 aspect ratio"):
        video_output_size((100, 1000), request, DEFAULT_LIMITS, 16)


def test_mp4_encoding_is_browser_friendly() -> None:
    frames = np.random.default_rng(0).integers(0, 255, (5, 32, 48, 3), dtype=np.uint8)
    data = media.encode_video(media.Video(frames, fps=8), media.Encoding("mp4"))
    decoded, meta = mp4_facts(data)
    assert decoded.shape == (5, 32, 48, 3) and meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p")
    assert data[4:8] == b"ftyp" and data.index(b"moov") < data.index(b"mdat")
