"""A shared originals directory: each process receives uploads in its own folder, and a
start removes only what dead processes left (never another live worker's upload)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

from studyrag.ingest.originals import OriginalStore
from studyrag.ingest.ownership import _start_time, process_owner


async def _chunks(data: bytes):  # type: ignore[no-untyped-def]
    yield data


def test_a_start_clears_only_the_uploads_of_dead_processes(tmp_path: Path) -> None:
    host = socket.gethostname()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        other_live = f"{host}:{live.pid}:{_start_time(live.pid)}"
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        gone = f"{host}:{dead.pid}:{_start_time(os.getpid())}"
        for owner in (other_live, gone):
            (tmp_path / ".incoming" / owner).mkdir(parents=True)
            (tmp_path / ".incoming" / owner / "partial").write_bytes(b"half an upload")
        store = OriginalStore(tmp_path, shared=True)
        assert store.incoming == tmp_path / ".incoming" / process_owner()
        assert store.clear_incoming() == 1
        assert (tmp_path / ".incoming" / other_live / "partial").exists()
        assert not (tmp_path / ".incoming" / gone).exists()
        sha, size = asyncio.run(
            store.save_stream(_chunks(b"whole file"), limit=1 << 20, name="a.txt")
        )
        assert store.path(sha).read_bytes() == b"whole file" and size == 10
        assert list(store.incoming.iterdir()) == []  # renamed into place
    finally:
        live.kill()
        live.wait()
