"""Every example in README.md and docs/ that calls the demo runs as written against a real server."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import ServerProcess
from tests.docs_examples import examples, run

needs_tools = pytest.mark.skipif(not (shutil.which("curl") and shutil.which("jq")), reason="needs curl and jq")
DEMO_HTTP, DEMO_GRPC = "localhost:8080", "localhost:8081"


def test_the_docs_have_an_example_for_each_task_and_protocol() -> None:
    demo = examples(DEMO_HTTP, DEMO_GRPC)
    text = "\n".join(example.code for example in demo)
    assert '"task_type": "img2img"' in text and '"mask": "%s"' in text and '"task_type": "text2video"' in text
    assert '"task_type": "img2video"' in text and "input_reference=" in text
    readme = "\n".join(example.code for example in demo if example.page == "README.md")
    for call in (":predict", "/v2/models/sdxl/infer", "tritonclient.grpc", "from openai import OpenAI"):
        assert call in readme, call
    assert {example.language for example in demo} == {"bash", "python"}


@needs_tools
def test_demo_examples_run_as_written(demo_server: ServerProcess, tmp_path: Path) -> None:
    """Against the server `make demo` starts: tiny SDXL with the tiny Wan2.2 TI2V-5B beside it."""
    demo = examples(DEMO_HTTP, DEMO_GRPC)
    answers = "\n".join(run(example, demo_server, tmp_path, DEMO_HTTP, DEMO_GRPC) for example in demo)
    for task in ("text2img", "img2img", "inpaint", "text2video", "img2video"):
        assert re.search(rf'"task_type":\s*"{task}"', answers), task
    assert (tmp_path / "fox.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "fox.mp4").read_bytes()[4:8] == b"ftyp"
    assert (tmp_path / "fox.jpg").read_bytes().startswith(b"\xff\xd8\xff")
    assert (tmp_path / "fox.webp").read_bytes()[8:12] == b"WEBP"
    assert "512x512 jpeg 42" in answers  # the README's OpenAI SDK example
    # docs/jobs.md: a job's predictions, the Videos API; docs/video.md: v2 binary and input_reference image-to-video
    for video in ("fox-job.mp4", "fox-openai.mp4", "fox-i2v.mp4", "fox-openai-i2v.mp4"):
        assert (tmp_path / video).read_bytes()[4:8] == b"ftyp", video
    assert "completed 100 2 256x256" in answers and "preference-applied: respond-async" in answers.lower()
    assert "completed 256x256" in answers  # docs/video.md's input_reference example


@needs_tools
def test_flux_examples_run_as_written(flux_server: ServerProcess, tmp_path: Path) -> None:
    """The FLUX section's calls, against the tiny FLUX served as model "flux" (the docs' port 8090)."""
    blocks = examples("localhost:8090")
    assert blocks and all("/models/flux" in example.code for example in blocks)
    answers = "\n".join(run(example, flux_server, tmp_path, "localhost:8090") for example in blocks)
    assert '"task_type": "text2img"' in answers and any("true_cfg_scale" in example.code for example in blocks)
