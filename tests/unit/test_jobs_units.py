"""Job pieces without a server: ids, records, the Prefer header, seconds to frames, the job store setting."""

from __future__ import annotations

import time

import pytest
from kserve_diffusion.api.request import DEFAULT_LIMITS, parse_request
from kserve_diffusion.config import parse_config
from kserve_diffusion.errors import ConfigError
from kserve_diffusion.jobs.local import planned_steps
from kserve_diffusion.jobs.records import JobRecord, is_job_id, log_ref, new_job_id
from kserve_diffusion.redact import without_job_ids, without_password
from kserve_diffusion.server.jobs import wants_async
from kserve_diffusion.server.openai.schemas import OpenAIError
from kserve_diffusion.server.openai.videos import _seconds, video_object


def test_job_ids_are_unguessable_and_logged_only_in_part() -> None:
    ids = {new_job_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(is_job_id(i) and len(i) == 44 for i in ids)
    job_id = ids.pop()
    assert log_ref(job_id) == job_id[:12]
    line = f"GET /v1/models/sdxl/jobs/{job_id}/events 200"
    assert without_job_ids(line) == f"GET /v1/models/sdxl/jobs/{job_id[:12]}.../events 200"
    for text in ("job_" + "0" * 39, "job_" + "G" * 40, "JOB_" + "0" * 40, "../../etc", job_id + "0"):
        assert not is_job_id(text)


def test_a_record_round_trips_and_ends_once() -> None:
    record = JobRecord(id=new_job_id(), model="sdxl", created_at=time.time(), total_steps=10)
    assert JobRecord.from_json(record.to_json()) == record
    assert JobRecord.from_json(record.to_json()[:-1] + b',"from_a_newer_version":1}') == record
    running = record.running(time.time()).replace(step=4)
    assert running.progress()["fraction"] == 0.4 and "queue_position" not in running.view()
    assert record.view()["queue_position"] == 0
    failed = running.ended("failed", {"status": 504, "message": "timeout"})
    assert failed.finished and failed.view()["error"]["status"] == 504 and failed.progress()["fraction"] == 0.4
    assert running.ended("succeeded").progress() == {"step": 10, "total_steps": 10, "fraction": 1.0, "step_at": None}
    assert running.replace(step=12).progress()["fraction"] == 0.99  # more steps than planned: never 1.0 early


@pytest.mark.parametrize(
    ("fields", "steps"),
    [
        ({"prompt": "x", "num_inference_steps": 20}, 20),
        ({"prompt": "x", "num_inference_steps": 20, "image": "data:,x", "strength": 0.5}, 10),
        ({"prompt": "x", "num_inference_steps": 3, "image": "data:,x", "strength": 0.1}, 1),
    ],
)
def test_planned_steps(fields: dict, steps: int) -> None:
    request = parse_request(fields, DEFAULT_LIMITS)
    if "image" in fields:
        request = request.model_copy(update={"task_type": "img2img"})
    assert planned_steps(request) == steps


@pytest.mark.parametrize(
    ("headers", "wanted"),
    [
        ([(b"prefer", b"respond-async")], True),
        ([(b"Prefer", b"wait=10, Respond-Async")], True),
        ([(b"prefer", b"respond-async; foo=bar")], True),
        ([(b"prefer", b"return=minimal")], False),
        ([(b"x-prefer", b"respond-async")], False),
        ([], False),
    ],
)
def test_the_prefer_header(headers: list[tuple[bytes, bytes]], wanted: bool) -> None:
    assert wants_async(headers) is wanted


def test_seconds_become_frames_or_a_clear_400() -> None:
    assert _seconds("4", 8, 81) == ("4", 33)
    assert _seconds(2, 6, 81) == ("2", 13)
    for bad in ("0", "-1", "1.5", "four", "9" * 20, None):
        with pytest.raises(OpenAIError, match="whole number"):
            _seconds(bad, 8, 81)
    with pytest.raises(OpenAIError, match=r"at most 81 frames \(at most 10 s at 8 fps"):
        _seconds("12", 8, 81)


def test_a_cancelled_video_is_failed_with_code_cancelled() -> None:
    record = JobRecord(id=new_job_id(), model="wan", created_at=1.0, total_steps=5, api="openai")
    shown = video_object(record.ended("cancelled"), ttl=60)
    assert shown["status"] == "failed" and shown["error"]["code"] == "cancelled"
    assert shown["expires_at"] == int(shown["completed_at"] + 60)
    assert video_object(record.running(2.0), ttl=60)["status"] == "in_progress"


def test_the_job_store_setting() -> None:
    assert parse_config(["--job_store", "redis://:pw@redis:6379/0"], environ={}).job_store.startswith("redis://")
    assert parse_config([], environ={"JOB_STORE": "unix:///run/redis.sock"}).job_store == "unix:///run/redis.sock"
    with pytest.raises(ConfigError, match="expected memory or a Redis URL") as raised:
        parse_config(["--job_store", "postgres://u:hunter2@db/0"], environ={})
    assert "hunter2" not in str(raised.value)
    assert without_password("rediss://user:pw@host:6380/1?ssl_cert_reqs=none") == "rediss://user:***@host:6380/1"
