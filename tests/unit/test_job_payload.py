"""A queued job's requests as stored for another replica: the same request, seed and pictures come back."""

from __future__ import annotations

from kserve_diffusion.api.inputs import InputImages
from kserve_diffusion.api.request import DEFAULT_LIMITS, fill, parse_request
from kserve_diffusion.jobs import payload
from kserve_diffusion.jobs.records import JobRecord
from kserve_diffusion.runtime.service import Prepared
from PIL import Image


def test_requests_and_pictures_survive_the_trip_with_the_seed_chosen_once() -> None:
    sent = {"prompt": "a fox", "image": "aGVsbG8=", "loras": [{"name": "ink", "scale": 0.5}], "height": 64, "width": 64}
    request = fill(parse_request(sent, DEFAULT_LIMITS), task_type="img2img", strength=0.3)
    picture, mask = Image.new("RGB", (64, 64), (1, 2, 3)), Image.new("L", (64, 64), 200)
    prepared = payload.with_seed(Prepared(request, InputImages(picture, mask, (picture, picture))))
    assert prepared.request.seed is not None and payload.with_seed(prepared) is prepared
    stored = payload.encode([prepared])
    assert b"aGVsbG8=" not in stored  # the picture travels decoded, not as sent (nor fetched again from a URL)
    (back,) = payload.decode(stored, DEFAULT_LIMITS)
    assert back.request.model_fields_set == prepared.request.model_fields_set  # "sent by the client" kept
    assert back.request.model_dump(exclude={"image"}) == prepared.request.model_dump(exclude={"image"})
    assert back.inputs.image is not None and back.inputs.image.tobytes() == picture.tobytes()
    assert back.inputs.mask is not None and back.inputs.mask.mode == "L"
    assert back.inputs.mask.tobytes() == mask.tobytes()
    assert len(back.inputs.pictures) == 2


def test_only_the_try_named_in_the_record_may_write_it() -> None:
    record = JobRecord(id="job_x", model="m", created_at=0.0, total_steps=1, attempt=2, replica="b")
    assert record.held_by("b", 2)
    assert not record.held_by("a", 2) and not record.held_by("b", 1)  # a paused replica, or an older try
    assert {"attempt": 2, "replica": "b"}.items() <= record.view().items()
