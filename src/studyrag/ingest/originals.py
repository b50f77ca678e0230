"""Original files, kept content-addressed under <data dir>/files/ so pages can be shown later.

A file is stored once however many documents (in however many notebooks) hold the same bytes,
at files/<first two hex digits>/<sha256>. Bytes arrive in files/.incoming/ first and are
renamed into place only when complete, so a half-written file never has a content address.

A directory shared by several workers (`ingest.files_dir`) gives each process its own
`.incoming/<owner>/`, so a worker that starts removes only what dead processes left, never
the upload another worker is receiving.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import anyio

from studyrag.errors import DiskFull, FileTooLarge
from studyrag.ingest.ownership import owner_gone, process_owner

log = logging.getLogger(__name__)

_BLOCK = 1 << 20
# "No space left on device" and "disk quota exceeded": the disk, not the file, is at fault.
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def _disk_full(exc: OSError, name: str) -> DiskFull | None:
    """DiskFull for a write refused for lack of space, else None (the OSError stands)."""
    if exc.errno not in _FULL:
        return None
    return DiskFull(
        f"{name} could not be stored: the disk under the data directory is full.",
        details={"filename": name},
    )


class OriginalStore:
    """Content-addressed originals in one directory tree."""

    def __init__(self, root: Path, *, shared: bool = False) -> None:
        self.root = root
        self.shared = shared
        self.incoming = root / ".incoming"
        if shared:
            self.incoming = self.incoming / process_owner()

    def path(self, sha256: str) -> Path:
        """Where the original with these bytes lives (it may not exist)."""
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return bool(sha256) and self.path(sha256).is_file()

    def clear_incoming(self) -> int:
        """Remove partial uploads a killed process left behind; returns how many."""
        if self.shared:
            return self._clear_shared_incoming()
        if not self.incoming.is_dir():
            return 0
        removed = 0
        for leftover in self.incoming.iterdir():
            leftover.unlink(missing_ok=True)
            removed += 1
        if removed:
            log.warning("removed %d partial upload(s) from %s", removed, self.incoming)
        return removed

    def _clear_shared_incoming(self) -> int:
        base = self.root / ".incoming"
        if not base.is_dir():
            return 0
        removed = 0
        for entry in base.iterdir():
            if not entry.is_dir():
                continue
            changed = datetime.fromtimestamp(entry.stat().st_mtime, UTC)
            # A dead process's (exact on this host, after a long lease elsewhere), or ours
            # from before this start (a reused pid token cannot be live twice).
            if entry.name == process_owner() or owner_gone(entry.name, changed):
                removed += sum(1 for _ in entry.iterdir())
                shutil.rmtree(entry, ignore_errors=True)
        if removed:
            log.warning("removed %d partial upload(s) from %s", removed, base)
        return removed

    async def save_stream(
        self, chunks: AsyncIterator[bytes], *, limit: int, name: str
    ) -> tuple[str, int]:
        """Store streamed bytes; (sha256, size). FileTooLarge as soon as `limit` is passed."""
        await anyio.to_thread.run_sync(lambda: self.incoming.mkdir(parents=True, exist_ok=True))
        tmp = self.incoming / uuid.uuid4().hex
        digest = hashlib.sha256()
        size = 0
        try:
            async with await anyio.open_file(tmp, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise FileTooLarge(
                            f"{name} is over the {limit / (1 << 20):g} MB limit.",
                            details={"filename": name},
                        )
                    digest.update(chunk)
                    await out.write(chunk)
            sha = digest.hexdigest()
            await anyio.to_thread.run_sync(self._place, tmp, sha)
        except OSError as exc:
            # The write, the final flush when the file closes, or the rename into place.
            if (full := _disk_full(exc, name)) is not None:
                raise full from exc
            raise
        finally:
            await anyio.to_thread.run_sync(lambda: tmp.unlink(missing_ok=True))
        return sha, size

    async def save_file(self, source: Path) -> tuple[str, int]:
        """Copy a local file in; (sha256, size)."""
        return await anyio.to_thread.run_sync(self._copy, source)

    def _copy(self, source: Path) -> tuple[str, int]:
        self.incoming.mkdir(parents=True, exist_ok=True)
        tmp = self.incoming / uuid.uuid4().hex
        digest = hashlib.sha256()
        size = 0
        try:
            with source.open("rb") as src, tmp.open("wb") as out:
                while block := src.read(_BLOCK):
                    digest.update(block)
                    size += len(block)
                    out.write(block)
            sha = digest.hexdigest()
            self._place(tmp, sha)
        except OSError as exc:
            if (full := _disk_full(exc, source.name)) is not None:
                raise full from exc
            raise
        finally:
            tmp.unlink(missing_ok=True)
        return sha, size

    def _place(self, tmp: Path, sha: str) -> None:
        target = self.path(sha)
        if target.is_file():
            return  # the same bytes are kept already
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)

    async def remove(self, sha256: str) -> None:
        """Delete an original (the caller checked that no document refers to it)."""
        if sha256:
            await anyio.to_thread.run_sync(lambda: self.path(sha256).unlink(missing_ok=True))


def sha256_of(path: Path) -> str:
    """The sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
