"""A job as every replica sees it: its status, progress and error, stored as JSON (the result apart)."""

from __future__ import annotations

import dataclasses
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = frozenset({"succeeded", "failed", "cancelled"})
ID_PREFIX = "job_"
ID_BYTES = 20  # 160 random bits: the first 32 may appear in logs (`log_ref`), 128 stay secret
LOG_REF_CHARS = len(ID_PREFIX) + 8


def new_job_id() -> str:
    """An unguessable id: knowing it is what gives access to the job and its result."""
    return ID_PREFIX + secrets.token_hex(ID_BYTES)


def is_job_id(text: str) -> bool:
    """Whether `text` has the shape of a job id (anything else is a 404 without a store lookup)."""
    hex_part = text[len(ID_PREFIX) :]
    return (
        text.startswith(ID_PREFIX) and len(hex_part) == 2 * ID_BYTES and all(c in "0123456789abcdef" for c in hex_part)
    )


def log_ref(job_id: str) -> str:
    """What the logs show of a job id: enough to follow one job, far too little to fetch its result."""
    return job_id[:LOG_REF_CHARS]


@dataclass(frozen=True)
class JobRecord:
    """One job's state. Only the replica running it moves it on, except a cancel, which any replica may
    write; a finished record never changes again."""

    id: str
    model: str
    created_at: float
    total_steps: int  # an estimate until the job finishes: denoising steps over all its instances
    api: str = "kserve"  # which routes made it: kserve (/jobs, respond-async) or openai (/videos)
    owner: str | None = None  # a digest of the caller's identity (server/auth.py); None: reachable by id alone
    status: str = "queued"
    step: int = 0
    step_at: float | None = None  # Unix time the last step written finished (on the accelerator thread)
    queue_position: int | None = 0
    eta_seconds: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    error: dict[str, Any] | None = None  # {"status": HTTP status, "message": ...} when failed
    result_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # what an API shows of the request (OpenAI: seconds, size)
    attempt: int = 0  # tries so far: 1 once a replica takes it, more when a replica died (or handed it back)
    replica: str | None = None  # the replica that holds it (POD_NAME, else hostname:pid); None while queued

    @property
    def finished(self) -> bool:
        """Succeeded, failed or cancelled: nothing moves it on any more."""
        return self.status in FINISHED

    def progress(self) -> dict[str, Any]:
        """{"step", "total_steps", "fraction", "step_at"}: fraction is 1.0 only once succeeded."""
        total = max(self.total_steps, self.step, 1)
        fraction = 1.0 if self.status == "succeeded" else min(self.step / total, 0.99)
        return {"step": self.step, "total_steps": total, "fraction": round(fraction, 4), "step_at": self.step_at}

    def replace(self, **changes: Any) -> JobRecord:
        """A copy with `changes`."""
        return dataclasses.replace(self, **changes)

    def running(self, started_at: float) -> JobRecord:
        """The record once its first instance starts on the accelerator."""
        return self.replace(status="running", started_at=started_at, queue_position=None)

    def ended(self, status: str, error: dict[str, Any] | None = None, result_bytes: int = 0) -> JobRecord:
        """The final record."""
        step = self.total_steps if status == "succeeded" else self.step
        total = max(self.total_steps, step)
        return self.replace(
            status=status,
            finished_at=time.time(),
            error=error,
            result_bytes=result_bytes,
            queue_position=None,
            eta_seconds=None,
            step=step,
            total_steps=total,
        )

    def held_by(self, replica: str, attempt: int) -> bool:
        """Whether `replica`'s try `attempt` still holds the job: the fencing check every write of the replica
        running a job makes (a replica that lost its lease must not overwrite what the next one writes)."""
        return self.replica == replica and self.attempt == attempt

    def visible_to(self, caller: str | None) -> bool:
        """Whether `caller` may see the job: its owner, or anyone with the id when it was made without one."""
        return self.owner is None or self.owner == caller

    def to_json(self) -> bytes:
        """The stored form."""
        return orjson.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, data: bytes | str) -> JobRecord:
        """Back from the stored form (fields a newer version added are ignored)."""
        values = orjson.loads(data)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})

    def view(self) -> dict[str, Any]:
        """The job as the /jobs routes show it (without predictions)."""
        shown: dict[str, Any] = {
            "id": self.id,
            "model": self.model,
            "status": self.status,
            "progress": self.progress(),
            "eta_seconds": self.eta_seconds,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "attempt": self.attempt,
            "replica": self.replica,
        }
        if self.status == "queued":
            shown["queue_position"] = self.queue_position
        if self.error is not None:
            shown["error"] = self.error
        return shown
