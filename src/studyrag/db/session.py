"""Async engine and sessions; Alembic migrations are applied when the database opens."""

from __future__ import annotations

import queue
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
from sqlalchemy import event, make_url, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from studyrag.errors import ConfigError, MissingExtraError, StorageFull

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# pg_advisory_xact_lock key of schema migrations (any constant; the same in every worker).
MIGRATE_LOCK = 0x5354_5544_5952_4147  # "STUDYRAG"

T = TypeVar("T")
# Idle read connections kept for the search hot path (more are opened under load).
_READERS_KEPT = 4


class Database:
    """Owns the engine and the session factory for one SQL store."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.dialect = "sqlite" if url.startswith("sqlite") else "postgresql"
        kwargs: dict[str, Any] = {"echo": echo}
        if self.dialect == "sqlite":
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        try:
            self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        except ModuleNotFoundError as exc:  # asyncpg not installed
            raise MissingExtraError("PostgreSQL storage", "postgres") from exc
        except Exception as exc:  # noqa: BLE001 - any malformed URL
            raise ConfigError(
                f"Invalid database URL {url!r}: {exc}",
                hint="Use sqlite+aiosqlite:///path.db or postgresql+asyncpg://user@host/db.",
            ) from exc
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # SQLite file: a few plain sqlite3 connections for read-only hot paths (search).
        database = make_url(url).database if self.dialect == "sqlite" else None
        self._read_path = database if database and database != ":memory:" else None
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    async def health(self) -> dict[str, Any]:
        """A round trip to the store and its server version; raises when it does not answer."""
        query = "select sqlite_version()" if self.is_sqlite else "show server_version"
        async with self.engine.connect() as conn:
            version = await conn.scalar(text(query))
        return {"status": "ok", "dialect": self.dialect, "version": str(version)}

    async def migrate(self) -> None:
        """Apply every Alembic migration up to head.

        On PostgreSQL, workers starting together on one database take turns: the first
        migrates while the others wait on a transaction-scoped advisory lock, then find the
        schema at head (DDL is transactional there, so nobody sees half of it)."""
        async with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATE_LOCK}
                )
            await conn.run_sync(_upgrade)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session that commits on success and rolls back on error; a write refused for
        lack of disk space is StorageFull (GEN_002), the vendor error kept as its cause."""
        async with self.sessions() as session:
            try:
                yield session
                await session.commit()
            except BaseException as exc:
                await session.rollback()
                if isinstance(exc, DBAPIError) and is_disk_full(exc):
                    raise StorageFull(
                        f"The database could not store this ({self.dialect}: the disk is full)."
                    ) from exc
                raise

    async def read(self, fn: Callable[[Any], T]) -> T:
        """Run `fn(dbapi_connection)` for reads that must be fast; SQLite only.

        Through the async engine every statement is several thread hops (about 0.5 ms each
        time, more when other threads want the GIL); a search's few statements are instead
        run in one worker thread on a plain sqlite3 connection, in WAL mode beside the
        writers, inside one read transaction: every statement of `fn` sees the same snapshot
        even while other connections commit. `fn` gets a DB-API connection (see fetch_all).
        """
        if self._read_path is None:
            async with self.engine.connect() as conn:
                return await conn.run_sync(lambda sync: fn(sync.connection.dbapi_connection))
        return await anyio.to_thread.run_sync(self._read, fn)

    def _read(self, fn: Callable[[Any], T]) -> T:
        try:
            conn = self._readers.get_nowait()
        except queue.Empty:
            path = self._read_path or ""
            conn = sqlite3.connect(
                path, timeout=30, check_same_thread=False, uri=path.startswith("file:")
            )
            conn.execute("PRAGMA query_only = ON")
        try:
            conn.execute("BEGIN")  # a plain connection would give each SELECT its own snapshot
            result = fn(conn)
            conn.rollback()
        except BaseException:
            conn.close()  # whatever state it is in, it is not reused
            raise
        if self._readers.qsize() < _READERS_KEPT:
            self._readers.put(conn)
        else:
            conn.close()
        return result

    async def aclose(self) -> None:
        while True:
            try:
                self._readers.get_nowait().close()
            except queue.Empty:
                break
        await self.engine.dispose()


def fetch_all(
    conn: Any, sql: str, params: dict[str, object] | list[Any] | None = None
) -> list[tuple[Any, ...]]:
    """Every row of one statement on a DB-API connection (what Database.read hands out)."""
    cur = conn.cursor()
    try:
        cur.execute(sql, params if params is not None else {})
        return [tuple(r) for r in cur.fetchall()]
    finally:
        cur.close()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _upgrade(conn: Connection) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")


# SQLite's SQLITE_FULL; PostgreSQL's SQLSTATE class 53 "insufficient resources": disk_full.
_SQLITE_FULL = 13
_PG_DISK_FULL = "53100"


def is_disk_full(exc: DBAPIError) -> bool:
    """Whether the database refused a write for lack of disk space."""
    orig = exc.orig
    if getattr(orig, "sqlite_errorcode", None) == _SQLITE_FULL:
        return True
    if "database or disk is full" in str(orig):
        return True
    # asyncpg's DiskFullError, wrapped by SQLAlchemy's adapter: the SQLSTATE is kept.
    return _PG_DISK_FULL in (getattr(orig, "sqlstate", None), getattr(orig, "pgcode", None))
