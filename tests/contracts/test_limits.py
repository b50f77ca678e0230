"""The limits of auth/quotas.py over both storages: limits' memory storage (one worker) and its
Redis storage (every worker), with a real SQLite database for the storage quota.

Each Redis test runs in its own broker namespace, so parallel runs never share a count.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from studyrag.auth.quotas import LOGIN_ATTEMPTS, Limits
from studyrag.config import APISettings, BrokerSettings, Settings
from studyrag.db.models import Document, Notebook
from studyrag.db.session import Database
from studyrag.db.usage import UsageRepo
from studyrag.errors import (
    BrokerUnavailable,
    LoginThrottled,
    RateLimited,
    StorageQuotaExceeded,
    UploadsPerDayExceeded,
)
from tests.contracts.test_broker import REDIS_URL, _redis_available

MB = 1024 * 1024


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'limits.db'}")
    await database.migrate()
    yield database
    await database.aclose()


MakeLimits = Callable[..., Limits]


@pytest.fixture(params=["memory", "redis"])
async def make_limits(
    request: pytest.FixtureRequest, tmp_path: Path, db: Database
) -> AsyncIterator[MakeLimits]:
    """Limits of one deployment; every call is another worker of it (same storage)."""
    if request.param == "redis" and not await _redis_available():
        pytest.fail(f"Redis is not reachable at {REDIS_URL}: start redis-server")
    namespace = f"limits-{uuid.uuid4().hex[:10]}"
    made: list[Limits] = []
    memory: list[Limits] = []

    def make(*, multi_user: bool = True, **api: object) -> Limits:
        broker = BrokerSettings(
            url=REDIS_URL if request.param == "redis" else "", namespace=namespace
        )
        settings = Settings(data_dir=tmp_path, api=APISettings(**api), broker=broker)  # type: ignore[arg-type]
        if request.param == "memory" and memory:
            # In process there is one worker: its storage is the one every caller shares.
            limits = Limits(
                memory[0].storage, settings=settings, usage=UsageRepo(db), multi_user=multi_user
            )
        else:
            limits = Limits.open(settings, usage=UsageRepo(db), multi_user=multi_user)
            memory.append(limits)
        made.append(limits)
        return limits

    yield make
    for limits in made:
        await limits.aclose()
    if request.param == "redis":
        await _forget(namespace)


async def _forget(namespace: str) -> None:
    """Drop the namespace's counts: a day's window would otherwise stay in Redis a day."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{namespace}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def test_messages_past_the_limit_get_rate_001_with_retry_after(
    make_limits: MakeLimits,
) -> None:
    limits = make_limits(rate_limit_per_minute=3)
    for _ in range(3):
        await limits.message("addr:10.0.0.1")
    with pytest.raises(RateLimited) as refused:
        await limits.message("addr:10.0.0.1")
    assert refused.value.error_code == "RATE_001" and refused.value.status_code == 429
    assert 0 < refused.value.retry_after <= 60
    assert refused.value.details["limit"] == 3
    # Another client has its own budget.
    await limits.message("addr:10.0.0.2")


async def test_two_workers_share_one_message_budget(make_limits: MakeLimits) -> None:
    a, b = make_limits(rate_limit_per_minute=4), make_limits(rate_limit_per_minute=4)
    for worker in (a, b, a, b):
        await worker.message("user:u1")
    for worker in (a, b):
        with pytest.raises(RateLimited):
            await worker.message("user:u1")


async def test_the_message_limit_is_read_from_the_settings_and_zero_turns_it_off(
    make_limits: MakeLimits,
) -> None:
    limits = make_limits(rate_limit_per_minute=1)
    await limits.message("addr:x")
    with pytest.raises(RateLimited):
        await limits.message("addr:x")
    limits.api.rate_limit_per_minute = 0
    for _ in range(50):
        await limits.message("addr:x")


async def test_login_attempts_are_throttled_per_address(make_limits: MakeLimits) -> None:
    limits = make_limits()
    for _ in range(LOGIN_ATTEMPTS):
        await limits.login("10.1.1.1")
    with pytest.raises(LoginThrottled) as refused:
        await limits.login("10.1.1.1")
    assert refused.value.error_code == "RATE_003"
    assert 1 <= refused.value.retry_after <= 600
    await limits.login("10.1.1.2")


async def _drain(limits: Limits, *, files: int, uploader: str = "u1", nb: str = "nb1") -> None:
    """Upload `files` one-byte files through the budget, as the upload routes do."""
    budget = await limits.upload(uploader=uploader, notebook_id=nb, declared_bytes=None)
    for i in range(files):
        async for _ in budget.chunks(f"f{i}.txt", _bytes(b"x")):
            pass


async def _bytes(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def test_uploads_per_day_count_files_across_workers(make_limits: MakeLimits) -> None:
    a, b = make_limits(uploads_per_day=3), make_limits(uploads_per_day=3)
    await _drain(a, files=2)
    await _drain(b, files=1)
    # Refused before a byte is read: nothing of the request is counted or stored.
    with pytest.raises(UploadsPerDayExceeded) as refused:
        await a.upload(uploader="u1", notebook_id="nb1", declared_bytes=10)
    assert refused.value.error_code == "RATE_004" and refused.value.status_code == 429
    assert 23 * 3600 < refused.value.retry_after <= 24 * 3600
    assert "24 hours" in refused.value.message and "h" in refused.value.hint
    # Another user has a day of their own.
    await _drain(b, files=3, uploader="u2")


async def test_a_file_past_the_daily_limit_is_refused_when_its_bytes_arrive(
    make_limits: MakeLimits,
) -> None:
    limits = make_limits(uploads_per_day=2)
    budget = await limits.upload(uploader="u1", notebook_id="nb1", declared_bytes=None)
    for name in ("a.txt", "b.txt"):
        assert [c async for c in budget.chunks(name, _bytes(b"1", b"2"))] == [b"1", b"2"]
    with pytest.raises(UploadsPerDayExceeded) as refused:
        async for _ in budget.chunks("c.txt", _bytes(b"3")):
            pass
    assert refused.value.details["filename"] == "c.txt"
    assert budget.refused is refused.value


async def _notebook(
    db: Database, owner: str | None, sizes: list[int], status: str = "active"
) -> str:
    nb = Notebook(name=f"nb-{uuid.uuid4().hex[:6]}", owner_id=owner, status=status)
    nb.name_key = nb.name
    async with db.session() as s:
        s.add(nb)
        await s.flush()
        for i, size in enumerate(sizes):
            s.add(
                Document(
                    notebook_id=nb.id,
                    filename=f"d{i}.txt",
                    file_type="text",
                    size=size,
                    sha256=uuid.uuid4().hex,
                    status="completed",
                )
            )
        await s.commit()
    return nb.id


async def test_storage_counts_the_originals_in_the_owners_notebooks(
    make_limits: MakeLimits, db: Database
) -> None:
    limits = make_limits(storage_quota_mb=1)
    mine = await _notebook(db, "alice", [300_000, 300_000])
    await _notebook(db, "alice", [200_000])
    await _notebook(db, "bob", [5 * MB])  # someone else's notebook counts for them only
    await _notebook(db, "alice", [5 * MB], status="deleting")  # on its way out
    usage = UsageRepo(db)
    assert await usage.stored_bytes("alice") == 800_000

    budget = await limits.upload(uploader="bob", notebook_id=mine, declared_bytes=None)
    chunk = b"x" * 100_000
    async for _ in budget.chunks("ok.txt", _bytes(chunk, chunk)):
        pass
    # Past the quota while the body streams: refused at the chunk that passes it.
    with pytest.raises(StorageQuotaExceeded) as refused:
        async for _ in budget.chunks("big.txt", _bytes(chunk, chunk, chunk)):
            pass
    assert refused.value.error_code == "RATE_005" and refused.value.status_code == 413
    assert refused.value.details["filename"] == "big.txt"
    assert refused.value.details["limit_bytes"] == MB

    # A declared body larger than what is left is refused before it is read.
    with pytest.raises(StorageQuotaExceeded):
        await limits.upload(uploader="bob", notebook_id=mine, declared_bytes=MB)
    await _notebook(db, "alice", [300_000])
    with pytest.raises(StorageQuotaExceeded) as full:
        await limits.upload(uploader="alice", notebook_id=mine, declared_bytes=None)
    assert full.value.details["used_bytes"] == 1_100_000


async def test_quotas_are_multi_user_defaults_and_off_in_local_mode(
    make_limits: MakeLimits, db: Database
) -> None:
    local = make_limits(multi_user=False)
    assert local.uploads_per_day == 0 and local.storage_quota_bytes == 0
    nb = await _notebook(db, None, [50 * 1024 * MB])
    await _drain(local, files=3, uploader=None, nb=nb)  # no limit at all
    multi = make_limits(multi_user=True)
    assert multi.uploads_per_day > 0 and multi.storage_quota_bytes > 0
    # Set explicitly, local mode has them too; 0 turns one off in multi-user mode.
    assert make_limits(multi_user=False, uploads_per_day=7).uploads_per_day == 7
    assert make_limits(multi_user=True, storage_quota_mb=0).storage_quota_bytes == 0


async def test_an_unreachable_redis_refuses_instead_of_counting_alone(
    tmp_path: Path, db: Database
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        api=APISettings(rate_limit_per_minute=5, uploads_per_day=5),
        broker=BrokerSettings(url="redis://127.0.0.1:1/0", namespace="nowhere"),
    )
    limits = Limits.open(settings, usage=UsageRepo(db), multi_user=True)
    try:
        with pytest.raises(BrokerUnavailable) as refused:
            await limits.message("addr:x")
        assert refused.value.error_code == "CHAT_011"
        assert "takes no new answers" in refused.value.message
        with pytest.raises(BrokerUnavailable, match="uploads"):
            await limits.upload(uploader="u", notebook_id="nb", declared_bytes=None)
    finally:
        await limits.aclose()
