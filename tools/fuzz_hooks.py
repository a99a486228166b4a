"""Schemathesis hooks for `make fuzz` (SCHEMATHESIS_HOOKS=tools.fuzz_hooks): job submissions and video creations get
the sizes the fuzz server's small limits need when the generated body leaves them out, so some are accepted and
the stateful phase follows the OpenAPI links from them to reads, events, content and cancels of real jobs.
Every other field stays as generated (bad ones are still bad)."""

from __future__ import annotations

from typing import Any

import schemathesis

SUBMIT = ("POST", "/v1/models/{model_name}/jobs")
CREATE_VIDEO = ("POST", "/openai/v1/videos")
VIDEO_TASKS = ("text2video", "img2video")
# Within tools/fuzz.sh's limits: --max_side 128, --max_frames 5, --max_video_pixels 20480 (5 x 64 x 64).
IMAGE_SIZE = {"height": 64, "width": 64}
VIDEO_SIZE = {"video_height": 64, "video_width": 64, "num_frames": 5}


@schemathesis.hook
def map_body(context: schemathesis.HookContext, body: Any) -> Any:
    """Fill the missing sizes of each generated instance of a job submission."""
    operation = context.operation
    if operation is None or not isinstance(body, dict):
        return body
    route = (operation.method.upper(), operation.path)
    if route == CREATE_VIDEO:
        body.setdefault("size", "64x64")  # the variant's default size is over --max_side
        return body
    if route != SUBMIT:
        return body
    instances = body.get("instances")
    for instance in instances if isinstance(instances, list) else []:
        if isinstance(instance, dict):
            sizes = VIDEO_SIZE if instance.get("task_type") in VIDEO_TASKS else IMAGE_SIZE
            for name, value in sizes.items():
                instance.setdefault(name, value)
    return body
