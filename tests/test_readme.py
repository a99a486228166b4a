"""The README's shell examples run as written against a server (the demo's port swapped for the test's)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ServerProcess

README = Path(__file__).parents[1] / "README.md"


def demo_examples() -> list[str]:
    """Every ```bash block of the README that talks to the demo server, in order."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.DOTALL)
    return [block for block in blocks if "localhost:8080" in block]


def test_the_readme_has_an_example_for_each_task() -> None:
    text = "\n".join(demo_examples())
    assert '"task_type": "img2img"' in text and '"mask": "%s"' in text and "/v2/models/sdxl/infer" in text
    assert '"task_type": "text2video"' in text


@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("jq")), reason="needs curl and jq")
def test_readme_examples_run_as_written(video_server: ServerProcess, tmp_path: Path) -> None:
    """Against the server `make demo` starts: tiny SDXL with the tiny Wan beside it."""
    outputs = []
    for block in demo_examples():
        script = block.replace("localhost:8080", f"127.0.0.1:{video_server.http_port}")
        result = subprocess.run(
            ["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
        )
        assert result.returncode == 0, f"{block}\n{result.stderr}"
        assert result.stdout.strip() or "base64 -d >" in block, block
        assert '"error"' not in result.stdout, f"{block}\n{result.stdout}"
        outputs.append(result.stdout)
    answers = "\n".join(outputs)
    for task in ("text2img", "img2img", "inpaint", "text2video"):
        assert re.search(rf'"task_type":\s*"{task}"', answers), task
    assert (tmp_path / "fox.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "fox.mp4").read_bytes()[4:8] == b"ftyp"
