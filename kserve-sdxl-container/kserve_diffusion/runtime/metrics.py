"""Prometheus metrics, served on /metrics beside KServe's own (the default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from ..api.request import TASK_TYPES

PREFIX = "kserve_diffusion_"
OUTCOMES = ("ok", "invalid", "rejected", "timeout", "cancelled", "oom", "error")
# Seconds: from a fraction of a second (small images) to many minutes (video).
TIME_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)

QUEUE_LENGTH = Gauge(PREFIX + "queue_length", "Requests waiting for the accelerator")
IN_FLIGHT = Gauge(PREFIX + "in_flight_requests", "Requests being handled (queued, generating or encoding)")
REQUESTS = Counter(PREFIX + "requests", "Generations by task and outcome", ["task", "outcome"])
QUEUE_WAIT = Histogram(PREFIX + "queue_wait_seconds", "Time waited for the accelerator", ["task"], buckets=TIME_BUCKETS)
GENERATION_TIME = Histogram(
    PREFIX + "generation_seconds", "Time on the accelerator per generation", ["task"], buckets=TIME_BUCKETS
)
STEPS = Counter(PREFIX + "denoising_steps", "Denoising steps run", ["task"])
STEPS_PER_SECOND = Gauge(PREFIX + "denoising_steps_per_second", "Denoising steps per second of the last generation")
IMAGES = Counter(PREFIX + "images", "Images produced")
VIDEO_FRAMES = Counter(PREFIX + "video_frames", "Video frames produced")
CACHE_SKIPPED = Counter(
    PREFIX + "cache_skipped_layers", "--cache: attention-layer evaluations the cache skipped", ["task"]
)
CACHE_TOTAL = Counter(
    PREFIX + "cache_total_layers", "--cache: attention-layer evaluations an uncached run would make", ["task"]
)
PEAK_MEMORY = Gauge(
    PREFIX + "peak_accelerator_memory_bytes", "Peak accelerator memory allocated during the last generation (0 on CPU)"
)


def count(task: str, outcome: str) -> None:
    """One finished (or refused) generation."""
    REQUESTS.labels(task=task, outcome=outcome).inc()


# Every task x outcome series exists from the start, at 0, so rates and alerts work before the first event.
for _task in (*TASK_TYPES, "unknown"):
    for _outcome in OUTCOMES:
        REQUESTS.labels(task=_task, outcome=_outcome)


def _compiled_graphs() -> float:
    """Graphs torch.compile has made in this process: it rises after the warm-up only when something recompiles."""
    from torch._dynamo.utils import counters  # imported on first scrape: the module is large

    return float(counters["stats"]["unique_graphs"])


COMPILED_GRAPHS = Gauge(PREFIX + "compiled_graphs", "Graphs torch.compile has made (--compile; rises on recompiles)")
COMPILED_GRAPHS.set_function(_compiled_graphs)
LORA_LOADS = Counter(PREFIX + "lora_loads", "LoRA adapters read from --lora_dir and loaded (first use, or evicted)")
LORA_CACHE_HITS = Counter(PREFIX + "lora_cache_hits", "Adapter uses served by an already loaded adapter")
JOBS = Counter(PREFIX + "jobs", "Jobs that reached each status on this replica (submitted, started, ended)", ["status"])
JOB_STORE_ERRORS = Counter(PREFIX + "job_store_errors", "Job store operations that failed (Redis unreachable, ...)")
JOB_STORE_LOST = Counter(
    PREFIX + "job_store_lost",
    "Running jobs whose record the job store no longer held (evicted, or Redis lost its data): stopped",
)
JOB_END_RETRIES = Counter(PREFIX + "job_end_retries", "Retried writes of a job's end (the job store was unavailable)")
SHARED_QUEUE_LENGTH = Gauge(
    PREFIX + "shared_queue_length", "Jobs in the shared queue (Redis --job_store) that no replica has taken yet"
)
JOBS_TAKEN = Counter(PREFIX + "jobs_taken", "Jobs this replica took from the shared queue (first tries and re-takes)")
JOBS_RETAKEN = Counter(
    PREFIX + "jobs_retaken", "Jobs this replica took again after the lease of the replica running them lapsed"
)
JOB_LEASE_RENEWALS = Counter(PREFIX + "job_lease_renewals", "Renewals of this replica's lease on the job it runs")
JOBS_HANDED_BACK = Counter(
    PREFIX + "jobs_handed_back", "Running jobs this replica gave back to the shared queue at shutdown"
)
