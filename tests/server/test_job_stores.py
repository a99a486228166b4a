"""The job stores' contract, the same tests on the memory store and on a real Redis server: records, changes,
TTLs, the bounds (--max_jobs, --max_jobs_per_owner, --max_job_result_bytes) and the eviction order, listing per
owner and kind, results read back in chunks."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest
from kserve_diffusion.errors import JobStoreUnavailable, TooManyJobs
from kserve_diffusion.jobs.memory_store import MemoryJobStore
from kserve_diffusion.jobs.records import JobRecord, new_job_id
from kserve_diffusion.jobs.redis_store import RedisJobStore
from kserve_diffusion.jobs.store import CHUNK_BYTES, JobStore, StoredResult

from tests.conftest import RedisProcess

TTL = 1.0


def record(**fields: Any) -> JobRecord:
    """A new queued job."""
    return JobRecord(id=new_job_id(), model="sdxl", created_at=time.time(), total_steps=4, **fields)


def cancelled(r: JobRecord) -> JobRecord | None:
    return None if r.finished else r.ended("cancelled")


def succeeded(r: JobRecord) -> JobRecord | None:
    return None if r.finished else r.ended("succeeded", result_bytes=3)


def kept(data: bytes) -> StoredResult:
    """A result of `data` bytes."""
    return StoredResult(data)


StoreTest = Callable[[JobStore], Coroutine[Any, Any, None]]
Runner = Callable[..., None]


@pytest.fixture(params=["memory", "redis"])
def run_with_store(request: pytest.FixtureRequest) -> Runner:
    """Runs an async test body with a fresh store of each kind (Redis: a fresh model prefix), with the bounds
    given as keywords (max_jobs, max_result_bytes, max_per_owner, ttl)."""

    def run(body: StoreTest, max_jobs: int = 100, max_result_bytes: int = 10_000, **more: Any) -> None:
        async def main() -> None:
            ttl = more.get("ttl", TTL)
            per_owner = more.get("max_per_owner")
            if request.param == "memory":
                store: JobStore = MemoryJobStore(max_jobs, max_result_bytes, ttl, per_owner)
            else:
                redis: RedisProcess = request.getfixturevalue("redis_server")
                store = RedisJobStore(
                    redis.url, f"model-{new_job_id()}", ttl, 60, max_jobs, max_result_bytes, per_owner
                )
            await store.start()
            try:
                await body(store)
            finally:
                await store.close()

        asyncio.run(main())

    return run


def test_create_read_update_and_forget(run_with_store: Runner) -> None:
    async def body(store: JobStore) -> None:
        job = record()
        await store.create(job)
        assert await store.get(job.id) == job
        assert await store.get(new_job_id()) is None
        moved, changed = await store.update(job.id, lambda r: r.replace(step=2))
        assert changed and moved is not None and moved.step == 2 and (await store.get(job.id)) == moved
        same, changed = await store.update(job.id, lambda r: None)
        assert not changed and same == moved
        done, changed = await store.update(job.id, succeeded, result=kept(b"[1]"))
        assert changed and done is not None and done.status == "succeeded"
        assert await store.result(job.id) == b"[1]"
        await store.delete(job.id)
        assert await store.get(job.id) is None and await store.result(job.id) is None
        assert await store.update(job.id, succeeded) == (None, False)

    run_with_store(body)


def test_a_cancel_and_a_finish_cannot_both_win(run_with_store: Runner) -> None:
    async def body(store: JobStore) -> None:
        for _ in range(10):
            job = record(status="running")
            await store.create(job)
            outcomes = await asyncio.gather(store.update(job.id, cancelled), store.update(job.id, succeeded))
            assert sum(changed for _, changed in outcomes) == 1
            final = await store.get(job.id)
            assert final is not None and final.status in ("cancelled", "succeeded")

    run_with_store(body)


def test_finished_jobs_are_forgotten_after_the_ttl(run_with_store: Runner) -> None:
    async def body(store: JobStore) -> None:
        finished, waiting = record(owner="token:a"), record(owner="token:a")
        await store.create(finished)
        await store.create(waiting)
        await store.update(finished.id, succeeded, result=kept(b"[]"))
        await asyncio.sleep(TTL + 1.2)
        assert await store.get(finished.id) is None and await store.result(finished.id) is None
        assert await store.get(waiting.id) is not None  # unfinished jobs stay
        assert [r.id for r in (await store.recent("token:a", "kserve", 10)).records] == [waiting.id]

    run_with_store(body)


def test_recent_lists_one_owner_and_kind_in_pages(run_with_store: Runner) -> None:
    async def body(store: JobStore) -> None:
        made = []
        for api in ("kserve", "openai", "kserve", "kserve"):
            job = record(api=api, owner="token:a")
            made.append(job.id)
            await store.create(job)
            await store.create(record(api=api, owner="token:b"))  # another caller's: never listed for a
            await asyncio.sleep(0.01)
        mine = [made[3], made[2], made[0]]
        page = await store.recent("token:a", "kserve", 2)
        assert [r.id for r in page.records] == mine[:2] and page.has_more
        page = await store.recent("token:a", "kserve", 2, after=mine[1])
        assert [r.id for r in page.records] == mine[2:] and not page.has_more
        page = await store.recent("token:a", "kserve", 5, ascending=True)
        assert [r.id for r in page.records] == mine[::-1]
        assert [r.id for r in (await store.recent("token:a", "openai", 10)).records] == [made[1]]
        assert (await store.recent("token:a", "kserve", 10, after=new_job_id())).records == []
        assert (await store.recent("token:c", "kserve", 10)).records == []

    run_with_store(body)


def test_results_are_read_back_in_chunks(run_with_store: Runner) -> None:
    async def body(store: JobStore) -> None:
        job = record(api="openai")
        await store.create(job)
        data, video = bytes(range(256)) * (CHUNK_BYTES // 100), b"\x00\x00\x00\x18ftypmp42" * 1000
        await store.update(job.id, succeeded, result=StoredResult(data, video))
        stream = await store.read(job.id)
        assert stream is not None and stream.size == len(data)
        chunks = [bytes(chunk) async for chunk in stream.chunks]
        assert len(chunks) == 3 and b"".join(chunks) == data
        content = await store.read(job.id, "content")
        assert content is not None and b"".join([bytes(c) async for c in content.chunks]) == video
        assert await store.read(new_job_id()) is None

    run_with_store(body, max_result_bytes=10 * CHUNK_BYTES)


def test_watchers_see_each_change(run_with_store: Runner) -> None:
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


def test_store_bounds(run_with_store: Runner) -> None:
    async def body(store: JobStore) -> None:
        first, second = record(), record()
        await store.create(first)
        await store.create(second)
        with pytest.raises(JobStoreUnavailable, match="--max_jobs"):
            await store.create(record())  # both unfinished: full
        assert await store.room_for(6)
        await store.update(first.id, succeeded, result=kept(b"123456"))
        third = record()
        await store.create(third)  # the oldest finished one is forgotten for it
        assert await store.get(first.id) is None and await store.get(third.id) is not None
        assert await store.room_for(6)
        await store.update(second.id, succeeded, result=kept(b"123456"))
        assert await store.room_for(6)  # over 10 bytes with it: the older result goes
        await store.update(third.id, succeeded, result=kept(b"123456"))
        assert await store.get(second.id) is None and await store.result(third.id) == b"123456"
        assert not await store.room_for(11)  # more than the bound: never

    run_with_store(body, max_jobs=2, max_result_bytes=10, ttl=60, max_per_owner=10)


def test_jobs_without_a_result_are_forgotten_first(run_with_store: Runner) -> None:
    """The attack: one client's submit+cancel pairs pushed out another client's succeeded job."""

    async def body(store: JobStore) -> None:
        theirs = record(owner="token:victim")
        await store.create(theirs)
        await store.update(theirs.id, succeeded, result=kept(b"[1]"))
        for _ in range(20):
            spam = record(owner="token:attacker")
            await store.create(spam)
            await store.update(spam.id, cancelled)
        assert await store.result(theirs.id) == b"[1]"

    run_with_store(body, max_jobs=3, ttl=60)


def test_one_owner_holds_at_most_its_bound(run_with_store: Runner) -> None:
    async def body(store: JobStore) -> None:
        mine = [record(owner="token:busy") for _ in range(2)]
        for job in mine:
            await store.create(job)
        with pytest.raises(TooManyJobs, match="--max_jobs_per_owner"):
            await store.create(record(owner="token:busy"))
        other = record(owner="token:other")
        await store.create(other)  # another caller is not held back
        await store.update(other.id, succeeded, result=kept(b"1"))
        await store.update(mine[0].id, cancelled)
        await store.create(record(owner="token:busy"))  # forgets its own finished job, never another's
        assert await store.get(mine[0].id) is None and await store.get(other.id) is not None

    run_with_store(body, max_per_owner=2, ttl=60)


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


def test_an_unreachable_redis_is_a_clear_503(redis_server: RedisProcess, caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        store = RedisJobStore("redis://:secret@127.0.0.1:1/0", "x", 60, 60)
        await store.start()
        with pytest.raises(JobStoreUnavailable) as raised:
            await store.get(new_job_id())
        message = raised.value.message
        # The client learns what still works, not where Redis is nor a Python exception's name.
        assert message == "the job store is unavailable right now; retry later (synchronous :predict still works)"
        await store.close()

    asyncio.run(body())
    logged = caplog.text
    assert "redis://:***@127.0.0.1:1/0" in logged and "secret" not in logged


def test_a_full_redis_is_called_full(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    redis = RedisProcess(tmp_path, "--maxmemory", "3mb", "--maxmemory-policy", "noeviction")

    async def body() -> None:
        store = RedisJobStore(redis.url, "full", 60, 60, max_jobs=100_000, max_result_bytes=10**10)
        await store.start()
        try:
            with pytest.raises(JobStoreUnavailable, match=r"^the job store is full \(Redis has no memory left\)"):
                for _ in range(100):
                    job = record()
                    await store.create(job)
                    await store.update(job.id, succeeded, result=kept(b"x" * 200_000))
        finally:
            await store.close()

    try:
        asyncio.run(body())
    finally:
        redis.stop()
    assert re.search(r"job_[0-9a-f]{40}", caplog.text) is None  # no whole job id in the log


def test_a_video_stays_listed_after_many_other_jobs(run_with_store: Runner) -> None:
    """The Videos list read a window of the newest jobs of every kind: 2,000 other jobs pushed a video out."""

    async def body(store: JobStore) -> None:
        video = record(api="openai", owner="token:a")
        await store.create(video)
        for _ in range(600):  # more than the old window of the memory store (500)
            await store.create(record(owner="token:a"))
        page = await store.recent("token:a", "openai", 20)
        assert [r.id for r in page.records] == [video.id] and not page.has_more

    run_with_store(body, max_jobs=1000, max_per_owner=1000, ttl=60)


def test_the_shared_queue_hands_out_each_job_once_and_forgets_gone_replicas(redis_server: RedisProcess) -> None:
    async def body() -> None:
        store = RedisJobStore(redis_server.url, "queue-unit", 60, 60)
        await store.start()
        queue = store.queue
        assert queue is not None
        first, second = record(), record()
        for job in (first, second):
            await store.create(job, b"[]")
        taken = [await queue.next_new(name, 100) for name in ("replica-a", "replica-b", "replica-c")]
        assert [entry.job_id if entry else None for entry in taken] == [first.id, second.id, None]  # FIFO, once
        assert await queue.next_lapsed("replica-c", 60) is None  # both leases are fresh
        live = await queue.client.hget(store.prefix + "entries", second.id)
        await queue.client.xadd(queue.stream, {"job": second.id})  # a submission retried after a lost reply
        duplicate = await queue.next_new("replica-c", 100)
        assert duplicate is not None and duplicate.job_id == second.id
        await queue.drop(duplicate)  # only that entry goes: replica-b's lease on the live one stays
        assert await queue.client.hget(store.prefix + "entries", second.id) == live
        assert await queue.client.xlen(queue.stream) == 2
        await queue.remove(first.id)  # replica-a's job ended: it holds nothing now
        await asyncio.sleep(0.05)
        assert await queue.forget_gone_replicas(0.01) == 2  # a and c; b still holds a job
        consumers = await queue.client.xinfo_consumers(queue.stream, "replicas")
        assert [consumer["name"] for consumer in consumers] == [b"replica-b"]
        await store.close()

    asyncio.run(body())
