"""--job_store -> the job store: memory, or Redis for a URL (checked reachable before the server starts)."""

from __future__ import annotations

from collections.abc import Callable

from ..config import ServerConfig
from ..runtime import metrics
from .memory_store import MemoryJobStore
from .records import STATUSES
from .redis_store import RedisJobStore
from .store import JobStore


def _memory(config: ServerConfig) -> JobStore:
    return MemoryJobStore(
        config.max_jobs, config.max_job_result_bytes, config.job_ttl_seconds, config.max_jobs_per_owner
    )


def _redis(config: ServerConfig) -> JobStore:
    store = RedisJobStore(
        config.job_store,
        config.model_name,
        config.job_ttl_seconds,
        config.request_timeout,
        max_jobs=config.max_jobs,
        max_result_bytes=config.max_job_result_bytes,
        max_per_owner=config.max_jobs_per_owner,
    )
    store.check()
    return store


# --job_store memory, or a URL whose scheme picks the store.
STORES: dict[str, Callable[[ServerConfig], JobStore]] = {
    "memory": _memory,
    "redis": _redis,
    "rediss": _redis,
    "unix": _redis,
}


def open_store(config: ServerConfig) -> JobStore:
    """The configured store, checked reachable (ConfigError when it is not: a startup error)."""
    kind = config.job_store if config.job_store == "memory" else config.job_store.split("://", 1)[0]
    return STORES[kind](config)


for _status in STATUSES:  # every series exists from the start, at 0
    metrics.JOBS.labels(status=_status)
