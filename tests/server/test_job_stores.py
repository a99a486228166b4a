"""The job stores' contract, the same tests on the memory store and on a real Redis server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest
from kserve_diffusion.errors import JobStoreUnavailable
from kserve_diffusion.jobs.records import JobRecord, new_job_id
from kserve_diffusion.jobs.redis_store import RedisJobStore
from kserve_diffusion.jobs.store import JobStore, MemoryJobStore

from tests.conftest import RedisProcess

TTL = 1.0


def record(**fields: Any) -> JobRecord:
    """A new queued job."""
    return JobRecord(id=new_job_id(), model="sdxl", created_at=time.time(), total_steps=4, **fields)


def cancelled(r: JobRecord) -> JobRecord | None:
    return None if r.finished else r.ended("cancelled")


def succeeded(r: JobRecord) -> JobRecord | None:
    return None if r.finished else r.ended("succeeded", result_bytes=3)


StoreTest = Callable[[JobStore], Coroutine[Any, Any, None]]


@pytest.fixture(params=["memory", "redis"])
def run_with_store(request: pytest.FixtureRequest) -> Callable[[StoreTest], None]:
    """Runs an async test body with a fresh store of each kind (Redis: a fresh model prefix)."""

    def run(body: StoreTest) -> None:
        async def main() -> None:
            if request.param == "memory":
                store: JobStore = MemoryJobStore(max_jobs=100, max_result_bytes=10_000, ttl=TTL)
            else:
                redis: RedisProcess = request.getfixturevalue("redis_server")
                store = RedisJobStore(redis.url, f"model-{new_job_id()}", TTL, unfinished_ttl=60)
            await store.start()
            try:
                await body(store)
            finally:
                await store.close()

        asyncio.run(main())

    return run


def test_create_read_update_and_forget(run_with_store: Callable[[StoreTest], None]) -> None:
    async def body(store: JobStore) -> None:
        job = record()
        await store.create(job)
        assert await store.get(job.id) == job
        assert await store.get(new_job_id()) is None
        moved, changed = await store.update(job.id, lambda r: r.replace(step=2))
        assert changed and moved is not None and moved.step == 2 and (await store.get(job.id)) == moved
        same, changed = await store.update(job.id, lambda r: None)
        assert not changed and same == moved
        done, changed = await store.update(job.id, succeeded, result=b"[1]")
        assert changed and done is not None and done.status == "succeeded"
        assert await store.result(job.id) == b"[1]"
        await store.delete(job.id)
        assert await store.get(job.id) is None and await store.result(job.id) is None
        assert await store.update(job.id, succeeded) == (None, False)

    run_with_store(body)


def test_a_cancel_and_a_finish_cannot_both_win(run_with_store: Callable[[StoreTest], None]) -> None:
    async def body(store: JobStore) -> None:
        for _ in range(10):
            job = record(status="running")
            await store.create(job)
            outcomes = await asyncio.gather(store.update(job.id, cancelled), store.update(job.id, succeeded))
            assert sum(changed for _, changed in outcomes) == 1
            final = await store.get(job.id)
            assert final is not None and final.status in ("cancelled", "succeeded")

    run_with_store(body)


def test_finished_jobs_are_forgotten_after_the_ttl(run_with_store: Callable[[StoreTest], None]) -> None:
    async def body(store: JobStore) -> None:
        finished, waiting = record(), record()
        await store.create(finished)
        await store.create(waiting)
        await store.update(finished.id, succeeded, result=b"[]")
        await asyncio.sleep(TTL + 1.2)
        assert await store.get(finished.id) is None and await store.result(finished.id) is None
        assert await store.get(waiting.id) is not None  # unfinished jobs stay
        assert [r.id for r in await store.recent(10)] == [waiting.id]

    run_with_store(body)


def test_recent_is_newest_first_bounded_and_filtered(run_with_store: Callable[[StoreTest], None]) -> None:
    async def body(store: JobStore) -> None:
        made = []
        for api in ("kserve", "openai", "kserve"):
            job = record(api=api)
            made.append(job.id)
            await store.create(job)
            await asyncio.sleep(0.01)
        assert [r.id for r in await store.recent(2)] == made[::-1][:2]
        assert [r.id for r in await store.recent(10, api="openai")] == [made[1]]

    run_with_store(body)


def test_watchers_see_each_change(run_with_store: Callable[[StoreTest], None]) -> None:
    async def body(store: JobStore) -> None:
        job = record()
        await store.create(job)
        async with store.watch(job.id) as changes:
            await store.update(job.id, lambda r: r.running(time.time()))
            await store.update(job.id, lambda r: r.replace(step=1))
            await store.update(job.id, succeeded)
            seen = [await asyncio.wait_for(anext(changes), 5) for _ in range(3)]
        assert [(r.status, r.step) for r in seen] == [("running", 0), ("running", 1), ("succeeded", 4)]

    run_with_store(body)


def test_memory_store_bounds() -> None:
    async def body() -> None:
        store = MemoryJobStore(max_jobs=2, max_result_bytes=10, ttl=60)
        first, second = record(), record()
        await store.create(first)
        await store.create(second)
        with pytest.raises(JobStoreUnavailable, match="--max_jobs"):
            await store.create(record())  # both unfinished: full
        await store.update(first.id, succeeded, result=b"123456")
        third = record()
        await store.create(third)  # the oldest finished one is forgotten for it
        assert await store.get(first.id) is None and await store.get(third.id) is not None
        await store.update(second.id, succeeded, result=b"123456")
        await store.update(third.id, succeeded, result=b"123456")  # over 10 bytes: the older result goes
        assert await store.get(second.id) is None and await store.result(third.id) == b"123456"

    asyncio.run(body())


def test_redis_cancels_reach_the_listening_replica(redis_server: RedisProcess) -> None:
    async def body() -> None:
        stores = [RedisJobStore(redis_server.url, "shared", 60, 60) for _ in range(2)]
        for store in stores:
            await store.start()
        heard: AsyncIterator[str] = stores[0].cancellations()
        listening = asyncio.ensure_future(anext(heard))
        await asyncio.sleep(0.3)  # subscribed
        job_id = new_job_id()
        await stores[1].announce_cancel(job_id)
        assert await asyncio.wait_for(listening, 5) == job_id
        for store in stores:
            await store.close()

    asyncio.run(body())


def test_an_unreachable_redis_is_a_clear_503(redis_server: RedisProcess) -> None:
    async def body() -> None:
        store = RedisJobStore("redis://:secret@127.0.0.1:1/0", "x", 60, 60)
        await store.start()
        with pytest.raises(JobStoreUnavailable) as raised:
            await store.get(new_job_id())
        message = raised.value.message
        assert "redis://:***@127.0.0.1:1/0" in message and "secret" not in message and ":predict still works" in message
        await store.close()

    asyncio.run(body())
