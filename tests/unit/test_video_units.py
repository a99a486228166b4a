"""Video units: Wan frame counts and flow shift, MP4 encoding."""

from __future__ import annotations

import numpy as np
from kserve_diffusion import media
from kserve_diffusion.api.request import DEFAULT_LIMITS, parse_request
from kserve_diffusion.pipelines.wan import WanRunner, frame_count_problem

from tests.helpers import mp4_facts


def test_frame_counts_and_flow_shift() -> None:
    assert frame_count_problem(81) is None and frame_count_problem(1) is None
    assert "25 or 29" in frame_count_problem(26)
    runner = WanRunner(pipeline=None, flow_shift=None)  # type: ignore[arg-type]
    at = lambda h, w: parse_request({"prompt": "x", "video_height": h, "video_width": w}, DEFAULT_LIMITS)  # noqa: E731
    assert runner.shift_for(at(480, 832)) == 3.0 and runner.shift_for(at(720, 1280)) == 5.0
    assert WanRunner(pipeline=None, flow_shift=4.0).shift_for(at(720, 1280)) == 4.0  # type: ignore[arg-type]


def test_mp4_encoding_is_browser_friendly() -> None:
    frames = np.random.default_rng(0).integers(0, 255, (5, 32, 48, 3), dtype=np.uint8)
    data = media.encode_video(media.Video(frames, fps=8), media.Encoding("mp4"))
    decoded, meta = mp4_facts(data)
    assert decoded.shape == (5, 32, 48, 3) and meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p")
    assert data[4:8] == b"ftyp" and data.index(b"moov") < data.index(b"mdat")
