"""The OpenAI Videos API with the official SDK: create, poll, list, download, delete, and its errors."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.conftest import ServerProcess
from tests.helpers import decode_data_url, mp4_facts, predict
from tests.jobs_client import SLOW, job_url, submit, wait_for, wait_idle

warnings.filterwarnings("ignore", category=DeprecationWarning)  # the SDK marks the Sora routes deprecated
FAST = {"num_inference_steps": 3, "seed": 5}


@pytest.fixture(scope="module")
def sdk(video_server: ServerProcess) -> Iterator[openai.OpenAI]:
    """The official client, pointed at the server (any key: the server has no auth of its own)."""
    with openai.OpenAI(base_url=video_server.url + "/openai/v1", api_key="unused", max_retries=0) as client:
        yield client


@pytest.fixture
def http(video_server: ServerProcess) -> Iterator[httpx.Client]:
    """A plain client for the same server, as the same caller as `sdk` (its bearer token); the server is idle again
    after the test (cancelled blockers)."""
    with httpx.Client(base_url=video_server.url, timeout=120, headers={"Authorization": "Bearer unused"}) as client:
        yield client
        wait_idle(client)


def test_create_and_poll_then_download_the_mp4(sdk: openai.OpenAI, http: httpx.Client) -> None:
    video = sdk.videos.create_and_poll(prompt="a fox", seconds="1", size="80x64", extra_body=FAST, poll_interval_ms=100)
    assert (video.status, video.progress, video.seconds, video.size) == ("completed", 100, "1", "80x64")
    assert video.object == "video" and video.model == "sdxl" and video.prompt == "a fox" and video.error is None
    assert video.completed_at is not None and video.expires_at == video.completed_at + 3600
    content = sdk.videos.download_content(video.id).content
    # 1 s at the default 8 fps is 9 frames: what :predict makes of the same fields.
    fields = {"prompt": "a fox", "task_type": "text2video", "num_frames": 9, "video_width": 80, "video_height": 64}
    [prediction] = predict(http, {**fields, **FAST}).json()["predictions"]
    assert content == decode_data_url(prediction["video"])[1]
    assert mp4_facts(content)[0].shape[:3] == (9, 64, 80)


def test_json_bodies_and_our_fields_work_too(http: httpx.Client) -> None:
    body = {"prompt": "a fox", "seconds": 2, "size": "64x64", "fps": 6, **FAST}
    video = http.post("/openai/v1/videos", json=body).json()
    assert (video["status"], video["seconds"], video["size"]) == ("queued", "2", "64x64"), video
    done = wait_for(http, f"/openai/v1/videos/{video['id']}", ("completed", "failed"))
    assert done["status"] == "completed", done
    content = http.get(f"/openai/v1/videos/{video['id']}/content")
    assert content.headers["content-type"] == "video/mp4"
    assert len(mp4_facts(content.content)[0]) == 13  # 2 s x 6 fps + 1


def test_defaults_are_shown_as_seconds_and_size(sdk: openai.OpenAI) -> None:
    video = sdk.videos.create(prompt="a fox", extra_body={"num_inference_steps": 1})
    assert (video.seconds, video.size) == ("3", "704x480")  # 25 frames at 8 fps, the model's default size
    sdk.videos.delete(video.id)


def test_list_retrieve_and_delete(sdk: openai.OpenAI) -> None:
    made = [sdk.videos.create(prompt="a fox", seconds="1", size="64x64", extra_body=FAST).id for _ in range(3)]
    page = sdk.videos.list(limit=2)
    assert [v.id for v in page.data] == made[::-1][:2] and page.has_more
    assert [v.id for v in sdk.videos.list(limit=2, after=made[1]).data][:1] == [made[0]]
    assert [v.id for v in sdk.videos.list(limit=100, order="asc").data][-3:] == made
    assert sdk.videos.retrieve(made[0]).id == made[0]
    for video_id in made:
        deleted = sdk.videos.delete(video_id)
        assert (deleted.id, deleted.deleted, deleted.object) == (video_id, True, "video.deleted")
        with pytest.raises(openai.NotFoundError):
            sdk.videos.retrieve(video_id)


@pytest.mark.parametrize(
    ("fields", "param", "message"),
    [
        ({"seconds": "0"}, "seconds", "whole number of seconds"),
        ({"seconds": "1.5"}, "seconds", "whole number of seconds"),
        ({"seconds": "100"}, "seconds", "at most 81 frames"),
        ({"size": "65x64"}, "size", "multiple of 16"),
        ({"size": "big"}, "size", "WIDTHxHEIGHT"),
        ({"extra_body": {"num_frames": 9}}, "num_frames", "send seconds"),
        ({"extra_body": {"video_width": 64}}, "video_width", "send size"),
        ({"extra_body": {"num_inference_steps": 0}}, "num_inference_steps", "num_inference_steps"),
        ({"extra_body": {"fps": "fast"}}, "fps", "fps"),
        ({"input_reference": ("a.png", b"\x89PNG\r\n\x1a\n", "image/png")}, "input_reference", "image-to-video"),
    ],
)
def test_bad_videos_are_400_naming_the_parameter(sdk: openai.OpenAI, fields: dict, param: str, message: str) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.videos.create(prompt="a fox", **fields)
    error = raised.value.body
    assert error["param"] == param and message in error["message"], error
    assert raised.value.response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "query", [{"limit": "44629"}, {"limit": "zero"}, {"order": "sideways\u00e9"}, {"after": "x" * 5000}]
)
def test_bad_list_parameters_are_400_or_an_empty_page(http: httpx.Client, query: dict) -> None:
    answer = http.get("/openai/v1/videos", params=query)
    if "after" in query:  # an unknown id: nothing after it
        assert answer.status_code == 200 and answer.json()["data"] == []
        return
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == next(iter(query)) and len(answer.text) < 600


def test_another_model_is_404(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        sdk.videos.create(prompt="a fox", model="sora-2")
    assert raised.value.body["code"] == "model_not_found"


def test_content_before_completion_is_409_and_other_variants_400(sdk: openai.OpenAI, http: httpx.Client) -> None:
    blocker = submit(http, SLOW)
    video = sdk.videos.create(prompt="a fox", seconds="1", size="64x64", extra_body=FAST)
    with pytest.raises(openai.ConflictError):
        sdk.videos.download_content(video.id)
    answer = http.get(f"/openai/v1/videos/{video.id}/content", params={"variant": "thumbnail"})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "variant"
    sdk.videos.delete(video.id)
    http.delete(job_url(blocker))


def test_a_cancelled_video_is_failed_with_code_cancelled(sdk: openai.OpenAI, http: httpx.Client) -> None:
    blocker = submit(http, SLOW)
    video = sdk.videos.create(prompt="a fox", seconds="1", size="64x64", extra_body=FAST)
    assert http.delete(job_url({"id": video.id})).status_code == 200  # cancelled through the job API
    retrieved = sdk.videos.retrieve(video.id)
    assert retrieved.status == "failed" and retrieved.error is not None and retrieved.error.code == "cancelled"
    http.delete(job_url(blocker))


def test_jobs_of_the_kserve_api_are_not_videos(sdk: openai.OpenAI, http: httpx.Client) -> None:
    job = wait_for(http, job_url(submit(http, {"prompt": "x", "height": 64, "width": 64, "num_inference_steps": 1})))
    with pytest.raises(openai.NotFoundError):
        sdk.videos.retrieve(job["id"])


def test_an_image_only_server_makes_no_videos(base_server: ServerProcess) -> None:
    with (
        openai.OpenAI(base_url=base_server.url + "/openai/v1", api_key="unused", max_retries=0) as client,
        pytest.raises(openai.BadRequestError) as raised,
    ):
        client.videos.create(prompt="a fox")
    assert "does not generate video" in raised.value.body["message"]
