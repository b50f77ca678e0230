"""Rate limits and per-user quotas, counted by the `limits` library where every worker sees them.

One home for every "how many, how often" rule a request can meet:

| rule | key | window | error |
|---|---|---|---|
| chat messages (`api.rate_limit_per_minute`) | user (multi-user) or address | 1 minute | RATE_001 |
| login and setup attempts (`LOGIN_ATTEMPTS`) | the address | 10 minutes | RATE_003 |
| uploaded files (`api.uploads_per_day`) | the uploading user | 24 hours | RATE_004 |
| originals kept (`api.storage_quota_mb`) | the notebook's owner | (SQL, no window) | RATE_005 |

The counts live in limits' in-memory storage with the in-process broker (one worker), and in
its Redis storage when the broker is Redis (same URL, keys under `<namespace>:limits`), so
1 worker or 4 refuse at the same count. Every window is a moving window: a count is exactly
the events of the last window, and Retry-After is when the oldest of them leaves it. Refused
attempts are not counted, so a client that waits Retry-After is let in.

WebSocket clients per conversation and per address are slots in the broker
(`Broker.take_slot`), held by `api/ws/manager.py`: a count of live sockets, not a rate.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Self

from limits import RateLimitItem, RateLimitItemPerDay, RateLimitItemPerMinute
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from starlette.requests import HTTPConnection

from studyrag.auth.context import acting_user
from studyrag.errors import (
    BrokerUnavailable,
    LoginThrottled,
    RateLimited,
    StorageQuotaExceeded,
    StudyRAGError,
    UploadsPerDayExceeded,
)

if TYPE_CHECKING:
    from limits.aio.storage import Storage

    from studyrag.config import Settings
    from studyrag.db.usage import UsageRepo

# Login and setup attempts one address may make per window (successful ones included).
LOGIN_ATTEMPTS = 20
LOGIN_MINUTES = 10
# Multi-user defaults when the setting is left unset (None); local mode has none.
DEFAULT_UPLOADS_PER_DAY = 500
DEFAULT_STORAGE_QUOTA_MB = 2048.0
# A multipart body is a little larger than its files (boundaries, part headers).
FORM_OVERHEAD = 64 * 1024


def open_storage(settings: Settings) -> tuple[Storage, Any]:
    """limits' storage next to the broker: (storage, the Redis pool to close or None)."""
    from limits.aio.storage import MemoryStorage

    url = settings.broker.url
    if not url or url == "memory://":
        return MemoryStorage(), None
    import redis.asyncio as aioredis
    from limits.aio.storage import RedisStorage

    # Our own pool, so it is closed with the app (limits' storage has no close of its own).
    pool = aioredis.ConnectionPool.from_url(url)
    namespace = settings.broker.namespace
    # limits picks its client by the scheme: redis://, rediss:// and redis+unix://.
    scheme_url = f"redis+{url}" if url.startswith("unix://") else url
    storage = RedisStorage(
        f"async+{scheme_url}",
        connection_pool=pool,  # type: ignore[arg-type]
        implementation="redispy",
        wrap_exceptions=True,
        key_prefix=f"{namespace}:limits" if namespace else "studyrag:limits",
    )
    return storage, pool


class Limits:
    """The limits of one deployment; routes call one method per rule."""

    def __init__(
        self,
        storage: Storage,
        *,
        settings: Settings,
        usage: UsageRepo,
        multi_user: bool,
        pool: Any = None,
    ) -> None:
        self.storage = storage
        self.window = MovingWindowRateLimiter(storage)
        # Read at each call, never copied: the Settings object stays the one source.
        self.api = settings.api
        self.usage = usage
        self.multi_user = multi_user
        self._pool = pool

    @classmethod
    def open(cls, settings: Settings, *, usage: UsageRepo, multi_user: bool) -> Self:
        storage, pool = open_storage(settings)
        return cls(storage, settings=settings, usage=usage, multi_user=multi_user, pool=pool)

    async def aclose(self) -> None:
        timer = getattr(self.storage, "timer", None)  # the memory storage's expiry task
        if timer is not None and not timer.done():
            timer.cancel()
        if self._pool is not None:
            await self._pool.aclose()

    # --- the rules -----------------------------------------------------------------------
    async def message(self, key: str) -> None:
        """Count one chat message for `key` (`client_key`); RATE_001 (429) past the limit."""
        per_minute = self.api.rate_limit_per_minute
        if per_minute <= 0:
            return
        item = RateLimitItemPerMinute(per_minute)
        if not await self._hit(item, "msg", key, what="answers"):
            retry = await self._retry_after(item, "msg", key)
            raise RateLimited(retry, limit=per_minute)

    async def login(self, address: str) -> None:
        """Count one login or setup attempt from `address`; RATE_003 past LOGIN_ATTEMPTS."""
        item = RateLimitItemPerMinute(LOGIN_ATTEMPTS, LOGIN_MINUTES)
        if not await self._hit(item, "login", address, what="logins"):
            retry = await self._retry_after(item, "login", address)
            raise LoginThrottled(max(retry, 1.0), limit=LOGIN_ATTEMPTS, minutes=LOGIN_MINUTES)

    @property
    def uploads_per_day(self) -> int:
        """Files per user per 24 hours; 0: no limit."""
        value = self.api.uploads_per_day
        if value is None:
            return DEFAULT_UPLOADS_PER_DAY if self.multi_user else 0
        return value

    @property
    def storage_quota_bytes(self) -> int:
        """Bytes of originals per notebook owner; 0: no limit."""
        value = self.api.storage_quota_mb
        if value is None:
            value = DEFAULT_STORAGE_QUOTA_MB if self.multi_user else 0.0
        return int(value * 1024 * 1024)

    async def upload(
        self, *, uploader: str | None, notebook_id: str, declared_bytes: int | None
    ) -> UploadBudget:
        """What one upload request may still store, checked before any byte is read:
        RATE_004 when the uploader has no file left today, RATE_005 when the notebook's
        owner has no storage left (or the declared body is larger than what is left)."""
        per_day = self.uploads_per_day
        if per_day:
            item = RateLimitItemPerDay(per_day)
            if not await self._test(item, "upload", _user_key(uploader)):
                retry = await self._retry_after(item, "upload", _user_key(uploader))
                raise UploadsPerDayExceeded(retry, limit=per_day)
        quota = self.storage_quota_bytes
        used = 0
        if quota:
            owner = await self.usage.notebook_owner(notebook_id)
            used = await self.usage.stored_bytes(owner)
            if used >= quota:
                raise StorageQuotaExceeded(used=used, limit=quota)
            if declared_bytes is not None and declared_bytes > quota - used + FORM_OVERHEAD:
                raise StorageQuotaExceeded(used=used, limit=quota, incoming=declared_bytes)
        return UploadBudget(self, uploader=uploader, per_day=per_day, quota=quota, used=used)

    # --- limits calls, their failures translated -----------------------------------------
    async def _hit(self, item: RateLimitItem, *key: str, what: str, cost: int = 1) -> bool:
        try:
            return await self.window.hit(item, *key, cost=cost)
        except (StorageError, OSError) as exc:
            raise _unreachable(what, exc) from exc

    async def _test(self, item: RateLimitItem, *key: str) -> bool:
        try:
            return await self.window.test(item, *key)
        except (StorageError, OSError) as exc:
            raise _unreachable("uploads", exc) from exc

    async def _retry_after(self, item: RateLimitItem, *key: str) -> float:
        try:
            stats = await self.window.get_window_stats(item, *key)
        except (StorageError, OSError) as exc:
            raise _unreachable("answers", exc) from exc
        return max(stats.reset_time - time.time(), 0.1)


class UploadBudget:
    """One upload request's files against the uploader's day and the owner's storage.

    `chunks()` wraps each file's bytes: the file is counted for the day when its first
    bytes arrive (atomically, so workers racing for the last file let one through), and the
    request's bytes are held against the storage left as they stream. A refusal is raised
    from inside the file's stream, so the store drops its partial copy: nothing is kept of
    a refused file, and the files before it stay. `refused` is the first such error."""

    def __init__(
        self, limits: Limits, *, uploader: str | None, per_day: int, quota: int, used: int
    ) -> None:
        self.limits = limits
        self.uploader = uploader
        self.per_day = per_day
        self.quota = quota
        self.used = used
        self.received = 0
        self.refused: StudyRAGError | None = None

    def chunks(self, filename: str, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        return _Counted(self, filename, chunks)

    async def count_file(self, filename: str) -> None:
        if not self.per_day:
            return
        item = RateLimitItemPerDay(self.per_day)
        key = _user_key(self.uploader)
        if not await self.limits._hit(item, "upload", key, what="uploads"):
            retry = await self.limits._retry_after(item, "upload", key)
            self._refuse(UploadsPerDayExceeded(retry, limit=self.per_day, filename=filename))

    def count_bytes(self, filename: str, n: int) -> None:
        self.received += n
        if self.quota and self.used + self.received > self.quota:
            self._refuse(
                StorageQuotaExceeded(
                    used=self.used, limit=self.quota, incoming=self.received, filename=filename
                )
            )

    def _refuse(self, error: StudyRAGError) -> None:
        if self.refused is None:
            self.refused = error
        raise error


class _Counted:
    """A file's bytes as they arrive, counted by its request's UploadBudget."""

    def __init__(self, budget: UploadBudget, filename: str, chunks: AsyncIterator[bytes]) -> None:
        self.budget = budget
        self.filename = filename
        self.source = chunks
        self.started = False

    def __aiter__(self) -> _Counted:
        return self

    async def __anext__(self) -> bytes:
        chunk = await anext(self.source)
        if not self.started:
            self.started = True
            await self.budget.count_file(self.filename)
        self.budget.count_bytes(self.filename, len(chunk))
        return chunk


def _user_key(user_id: str | None) -> str:
    return f"user:{user_id}" if user_id is not None else "local"


def _unreachable(what: str, exc: Exception) -> BrokerUnavailable:
    # The shared count is out of reach: refuse rather than let each worker count alone.
    cause = exc.storage_error if isinstance(exc, StorageError) else exc
    return BrokerUnavailable(
        f"This worker cannot reach the message broker that keeps the shared limits, so it "
        f"takes no new {what} until the broker is back ({cause}).",
        hint="Start Redis (check with `redis-cli ping`); GET /health shows the broker's state.",
    )


def client_key(conn: HTTPConnection) -> str:
    """The rate-limit key of an HTTP request or a WebSocket: its user in multi-user mode
    (a class behind one NAT address gets a budget per student), else the caller's address."""
    # Nothing the client chooses (a header, a new socket, a new client id) is part of the
    # key: any of those would hand a client a fresh budget whenever it asked for one. HTTP,
    # SSE and WebSocket messages of one user (or address) therefore share one budget.
    user = acting_user.get()  # set by the route's access policy (auth/policy.py)
    if user is not None:
        return f"user:{user}"
    return f"addr:{conn.client.host if conn.client else 'unknown'}"
