"""The playground page in a real browser: Debian's Chromium driven by Playwright for Python (no browser download),
against the demo server (the tiny SDXL + Wan2.2 TI2V-5B with LoRA adapters), directly and under a path prefix."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import ServerProcess, free_port
from tests.helpers import decode_data_url, pixels_of
from tests.image_host import gradient, png
from tests.jobs_client import SLOW, job_url, submit

PREFIX = "/team-a/images"
# A 400 the page was made to get is logged by the browser as a failed resource load: expected there, nowhere else.
FAILED_LOAD = "Failed to load resource: the server responded with a status of 400"


class Console:
    """What the page logged as errors, and its uncaught exceptions."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    def unexpected(self, allowed: tuple[str, ...] = ()) -> list[str]:
        """The errors that are not among `allowed` (substrings)."""
        return [text for text in self.errors if not any(part in text for part in allowed)]


@pytest.fixture
def page(browser: Any, demo_server: ServerProcess) -> Iterator[Any]:
    """A fresh page on the demo server's playground; no console error may be left at the end."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    opened = context.new_page()
    opened.console = Console(opened)
    opened.goto(f"{demo_server.url}/playground/")
    opened.wait_for_selector("#task_type option", state="attached")
    yield opened
    errors = opened.console.unexpected(getattr(opened, "allowed_errors", ()))
    context.close()
    assert not errors, errors


def fill(page: Any, **fields: Any) -> None:
    """Types each field into the control with that request field's name."""
    for name, value in fields.items():
        page.locator(f"#{name}").fill(str(value))


def choose_task(page: Any, task: str) -> None:
    """Picks a task by its request name."""
    page.get_by_label("Task").select_option(task)


def generate(page: Any, timeout: float = 120_000) -> Any:
    """Presses Generate and waits for a new result in the gallery; returns it (a <figure>)."""
    before = page.locator("#gallery figure").count()
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function(f"document.querySelectorAll('#gallery figure').length > {before}", timeout=timeout)
    return page.locator("#gallery figure").first


def submitted_body(page: Any, action: Any) -> dict[str, Any]:
    """The instance the page sent to the job API while `action` ran."""
    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/jobs")) as sent:
        action()
    return json.loads(sent.value.post_data)["instances"][0]


def image_of(figure: Any) -> Image.Image:
    """The picture a gallery result shows."""
    _, data = decode_data_url(figure.locator("img").get_attribute("src"))
    return Image.open(io.BytesIO(data))


def picture_file(tmp_path: Path, width: int, height: int) -> Path:
    """A PNG on disk to upload."""
    path = tmp_path / f"input-{width}x{height}.png"
    path.write_bytes(png(gradient(width, height)))
    return path


def test_text2img_result_in_gallery_with_its_parameters(page: Any) -> None:
    page.get_by_label("Prompt", exact=True).fill("a lighthouse at dusk")
    fill(page, width=256, height=192, num_inference_steps=3, seed=7)
    figure = generate(page)
    assert image_of(figure).size == (256, 192)
    caption = figure.locator("figcaption").inner_text()
    assert "a lighthouse at dusk" in caption and "7" in caption
    assert figure.get_by_role("link", name="Download").get_attribute("download").endswith(".png")
    assert page.locator("#status").inner_text() == "Succeeded"


def test_keyboard_submits_and_seed_is_reused(page: Any) -> None:
    fill(page, width=128, height=128, num_inference_steps=2)
    page.locator("#num_inference_steps").press("Enter")  # the form submits from the keyboard
    page.wait_for_selector("#gallery figure")
    page.get_by_role("button", name="Reuse last").click()
    seed = page.locator("#seed").input_value()
    assert seed and int(seed) >= 0
    assert f"seed{seed}" in page.locator("#gallery figcaption").first.inner_text().replace("\n", "").replace(" ", "")
    page.get_by_role("button", name="Random").click()
    assert page.locator("#seed").input_value() == ""


def test_progress_moves_and_cancel_stops_a_40_step_job(page: Any) -> None:
    fill(page, width=512, height=512, num_inference_steps=40)
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function("document.querySelector('#progress').value > 0", timeout=60_000)
    first = page.locator("#progress").evaluate("bar => bar.value")
    assert "of 40" in page.locator("#status").inner_text()
    page.wait_for_function(f"document.querySelector('#progress').value > {first}", timeout=60_000)
    page.wait_for_function("document.querySelector('#status').textContent.includes('s left')", timeout=60_000)
    page.get_by_role("button", name="Cancel").click()
    page.wait_for_function("document.querySelector('#status').textContent === 'Cancelled'", timeout=30_000)
    assert page.locator("#progress").evaluate("bar => bar.value") < 1
    assert page.locator("#gallery figure").count() == 0
    assert page.get_by_role("button", name="Generate").is_enabled()


def test_a_queued_job_shows_its_position(page: Any, demo_server: ServerProcess) -> None:
    with httpx.Client(base_url=demo_server.url, timeout=30) as http:
        ahead = submit(http, SLOW)  # the accelerator is busy with someone else's job
        try:
            fill(page, width=64, height=64, num_inference_steps=2)
            page.get_by_role("button", name="Generate").click()
            page.wait_for_function("document.querySelector('#status').textContent === 'Queued: next'")
        finally:
            http.delete(job_url(ahead))
    page.wait_for_selector("#gallery figure", timeout=60_000)


def test_img2img_with_an_uploaded_picture(page: Any, tmp_path: Path) -> None:
    choose_task(page, "img2img")
    page.locator("#image").set_input_files(picture_file(tmp_path, 192, 128))
    page.wait_for_function("document.querySelector('#picture').naturalWidth === 192")
    fill(page, num_inference_steps=4)  # x strength 0.3: one step
    body = submitted_body(page, lambda: page.get_by_role("button", name="Generate").click())
    assert body["task_type"] == "img2img" and body["image"].startswith("data:image/png;base64,")
    assert "width" not in body  # the output follows the picture's size
    page.wait_for_selector("#gallery figure")
    assert image_of(page.locator("#gallery figure").first).size == (192, 128)


def test_inpaint_with_a_painted_mask(page: Any, tmp_path: Path) -> None:
    choose_task(page, "inpaint")
    page.locator("#image").set_input_files(picture_file(tmp_path, 128, 128))
    page.wait_for_function("document.querySelector('#mask').width === 128")
    box = page.locator("#mask").bounding_box()
    page.mouse.move(box["x"] + 10, box["y"] + 10)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, steps=8)
    page.mouse.up()
    fill(page, num_inference_steps=2)
    body = submitted_body(page, lambda: page.get_by_role("button", name="Generate").click())
    mask = Image.open(io.BytesIO(decode_data_url(body["mask"])[1])).convert("L")
    assert mask.size == (128, 128)
    assert mask.getpixel((20, 20)) == 255 and mask.getpixel((120, 120)) == 0  # painted, and left alone
    page.wait_for_selector("#gallery figure")
    assert image_of(page.locator("#gallery figure").first).size == (128, 128)


def test_a_video_plays(page: Any) -> None:
    choose_task(page, "text2video")
    fill(page, video_width=128, video_height=128, num_frames=5, num_inference_steps=2, fps=8)
    figure = generate(page)
    video = figure.locator("video")
    video.evaluate("v => v.readyState >= 1 || new Promise(done => v.addEventListener('loadedmetadata', done))")
    assert video.evaluate("v => v.duration") > 0
    assert figure.get_by_role("button", name="Use as input").count() == 0  # a video is no input picture


def test_a_lora_is_chosen_with_its_scale(page: Any) -> None:
    page.get_by_label("sdxl-style (rank 4)").check()
    page.get_by_label("sdxl-style scale").fill("0.6")
    assert page.get_by_label("wan-style (rank 4)").count() == 0  # the video family's adapters are not offered
    fill(page, width=128, height=128, num_inference_steps=2)
    body = submitted_body(page, lambda: page.get_by_role("button", name="Generate").click())
    assert body["loras"] == [{"name": "sdxl-style", "scale": 0.6}]
    page.wait_for_selector("#gallery figure")
    choose_task(page, "text2video")
    assert page.get_by_label("wan-style (rank 4)").count() == 1


@pytest.mark.parametrize(
    ("fields", "where", "message"),
    [
        ({"num_inference_steps": 0}, "#num_inference_steps-error", "num_inference_steps: must be >= 1, got 0"),
        ({"width": 100, "num_inference_steps": 2}, "#width-error", "width: must be a multiple of 8"),
    ],
)
def test_an_invalid_value_shows_the_servers_message_next_to_its_field(
    page: Any, fields: dict[str, Any], where: str, message: str
) -> None:
    page.allowed_errors = (FAILED_LOAD,)
    fill(page, **fields)
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function(f"document.querySelector('{where}').textContent.length > 0")
    assert message in page.locator(where).inner_text()
    name = where[1:].removesuffix("-error")
    assert page.locator(f"#{name}").get_attribute("aria-invalid") == "true"
    assert page.locator("#gallery figure").count() == 0


def test_picture_task_without_a_picture_says_so_at_the_upload(page: Any) -> None:
    page.allowed_errors = (FAILED_LOAD,)
    choose_task(page, "img2img")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function("document.querySelector('#image-error').textContent.length > 0")
    assert "needs image" in page.locator("#image-error").inner_text()


def test_copy_as_curl_runs_and_gives_the_same_pixels(page: Any) -> None:
    page.get_by_label("Prompt", exact=True).fill('it\'s a "quoted" $HOME `prompt`')
    fill(page, width=128, height=128, num_inference_steps=2)
    figure = generate(page)
    figure.get_by_role("button", name="Copy as curl").click()
    command = page.locator("#curl-command").input_value()
    assert command == page.evaluate("navigator.clipboard.readText()")
    ran = subprocess.run(["bash", "-c", command], capture_output=True, timeout=120, check=False)
    assert ran.returncode == 0, ran.stderr.decode()  # --fail-with-body: a 200
    prediction = json.loads(ran.stdout)["predictions"][0]
    assert prediction["seed"] == int(figure.locator("dd").last.inner_text())
    shown = decode_data_url(figure.locator("img").get_attribute("src"))[1]
    assert pixels_of(decode_data_url(prediction["images"][0])[1]) == pixels_of(shown)
    page.get_by_role("button", name="Close").click()


def test_use_as_input_feeds_img2img(page: Any) -> None:
    fill(page, width=128, height=64, num_inference_steps=2)
    figure = generate(page)
    figure.get_by_role("button", name="Use as input").click()
    assert page.get_by_label("Task").input_value() == "img2img"
    page.wait_for_function("document.querySelector('#picture').naturalWidth === 128")
    fill(page, num_inference_steps=4)
    body = submitted_body(page, lambda: page.get_by_role("button", name="Generate").click())
    assert body["image"] == figure.locator("img").get_attribute("src")
    page.wait_for_function("document.querySelectorAll('#gallery figure').length === 2")


def test_phone_width_needs_no_sideways_scrolling(browser: Any, demo_server: ServerProcess) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    phone = context.new_page()
    phone.goto(f"{demo_server.url}/playground/")
    phone.wait_for_selector("#task_type option", state="attached")
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    assert phone.get_by_role("button", name="Generate").is_visible()
    context.close()


@pytest.fixture(scope="module")
def prefixed(demo_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The demo server behind a proxy that serves it under PREFIX (as a Route or an ingress rewrite would)."""
    port = free_port()
    script = Path(__file__).parents[1] / "prefix_proxy.py"
    log = open(tmp_path_factory.mktemp("proxy") / "proxy.log", "wb")  # noqa: SIM115 - closed below
    proxy = subprocess.Popen([sys.executable, str(script), str(port), PREFIX, demo_server.url], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}{PREFIX}/"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    yield url
    proxy.terminate()
    proxy.wait(10)
    log.close()


def test_the_page_works_under_a_path_prefix(browser: Any, prefixed: str) -> None:
    context = browser.new_context()
    opened = context.new_page()
    console = Console(opened)
    opened.goto(prefixed)  # a browser at the prefix's root is sent to the page
    assert opened.url == f"{prefixed}playground/"
    opened.wait_for_selector("#task_type option", state="attached")
    fill(opened, width=128, height=128, num_inference_steps=2)
    figure = generate(opened)
    assert image_of(figure).size == (128, 128)
    figure.get_by_role("button", name="Copy as curl").click()
    assert f"{prefixed}v1/models/sdxl:predict" in opened.locator("#curl-command").input_value()
    context.close()
    assert not console.unexpected(), console.errors


def test_playground_routes(demo_server: ServerProcess) -> None:
    with httpx.Client(base_url=demo_server.url, timeout=10) as http:
        assert http.get("/").json() == {"status": "alive"}  # probes and clients keep KServe's answer
        assert http.get("/", headers={"Accept": "*/*"}).json() == {"status": "alive"}
        browser_visit = http.get("/", headers={"Accept": "text/html,application/xhtml+xml"})
        assert browser_visit.status_code == 302 and browser_visit.headers["location"] == "playground/"
        assert http.get("/playground").headers["location"] == "playground/"
        page = http.get("/playground/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "https://" not in page.text and "http://" not in page.text  # nothing from the internet
        files = ["playground.js", "api.js", "form.js", "gallery.js", "mask.js", "playground.css"]
        sizes = [len(http.get(f"/playground/{name}").content) for name in files]
        assert sum(sizes) + len(page.content) < 100_000, sizes
        assert http.get("/playground/../../etc/passwd").status_code == 404
        assert http.get("/playground/%2e%2e/%2e%2e/etc/passwd").status_code == 404


def test_capabilities_describe_the_served_model(demo_server: ServerProcess) -> None:
    with httpx.Client(base_url=demo_server.url, timeout=30) as http:
        described = http.get("/v1/models/sdxl/capabilities").json()
        assert http.get("/v1/models/nope/capabilities").status_code == 404
        text2img = described["tasks"]["text2img"]
        assert list(described["tasks"]) == ["text2img", "img2img", "inpaint", "text2video", "img2video"]
        assert text2img["family"] == "sdxl" and not text2img["video"]
        assert text2img["defaults"]["scheduler"] in text2img["schedulers"]
        assert text2img["ranges"]["num_inference_steps"] == {"min": 1, "max": 150, "step": 1}
        assert text2img["ranges"]["width"] == {"min": 64, "max": 2048, "step": 8}
        assert "strength" not in text2img["fields"] and "strength" in described["tasks"]["img2img"]["fields"]
        assert "width" not in described["tasks"]["img2img"]["defaults"]  # follows the input picture
        video = described["tasks"]["text2video"]
        assert video["family"] == "wan" and video["video"] and video["output_formats"][0] == "mp4"
        assert {"num_frames", "fps", "video_width"} <= set(video["defaults"])
        assert described["tasks"]["inpaint"]["inputs"] == ["image", "mask"]
        assert {"sdxl-style", "wan-style"} <= {adapter["name"] for adapter in described["loras"]}
        # The defaults are what a request without those fields gets.
        small = {"prompt": "x", "height": 64, "width": 64, "num_inference_steps": 1, "seed": 1}
        answer = http.post("/v1/models/sdxl:predict", json={"instances": [small]}).json()["predictions"][0]
        assert decode_data_url(answer["images"][0])[0] == "image/" + text2img["defaults"]["output_format"]
