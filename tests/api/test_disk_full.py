"""The disk under the data directory fills up during an upload, or before a question (the
SQLite write of the question and its answer's placeholder is refused).

The server's whole data directory (SQLite, Chroma, originals) lives on a small tmpfs mounted
for this test, so the write that fails is a real ENOSPC from the kernel. Mounting needs
root (CAP_SYS_ADMIN); elsewhere the test is skipped and says why.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from studyrag.config import IngestSettings
from studyrag.errors import DiskFull
from studyrag.ingest.originals import OriginalStore
from tests.api.conftest import LiveServer, run_server, server_settings
from tests.api.test_streamed_upload import BOUNDARY, _leftovers

pytestmark = pytest.mark.slow

DISK_MB = 48
HUGE = 96 << 20  # more than the whole disk, under the file size limit
FORM = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    mount = tmp_path_factory.mktemp("small-disk")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(
            "a full disk needs a small tmpfs, and mounting one was refused "
            f"({done.stderr.strip() or done.returncode}; it needs root)"
        )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture(scope="module")
def full(small_disk: Path) -> Iterator[LiveServer]:
    settings = server_settings(small_disk / "data")
    settings.ingest = IngestSettings(max_file_size_mb=HUGE >> 19)
    with run_server(settings, with_chat=False) as server:
        yield server


def form(files: list[tuple[str, str, bytes | int]]) -> Iterator[bytes]:
    """A multipart body generated as it is sent (chunked); an int is that many filler bytes."""
    block = b"filler " * 40_000
    for field, name, content in files:
        yield (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{name}"\r\nContent-Type: text/plain\r\n\r\n'
        ).encode()
        if isinstance(content, bytes):
            yield content
        else:
            for begin in range(0, content, len(block)):
                yield block[: min(len(block), content - begin)]
        yield b"\r\n"
    yield f"--{BOUNDARY}--\r\n".encode()


def free_mb(path: Path) -> float:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize / (1 << 20)


def test_an_upload_that_fills_the_disk_is_refused_and_nothing_is_lost(
    full: LiveServer, small_disk: Path
) -> None:
    data = full.settings.data_dir
    with httpx.Client(base_url=full.base, timeout=120) as http:
        before = http.get("/api/documents").json()["items"]
        assert [(d["filename"], d["status"]) for d in before] == [("plants.md", "completed")]
        free = free_mb(small_disk)
        assert free < HUGE >> 20, "the upload must not fit"

        # One file, waited for: the error in the house shape with what to do.
        r = http.post("/api/documents", content=form([("file", "big.txt", HUGE)]), headers=FORM)
        assert r.status_code == 507, r.text
        body = r.json()
        assert set(body) == {"error_code", "message", "details", "request_id"}
        assert body["error_code"] == "DOC_015"
        assert "disk" in body["message"] and body["details"]["filename"] == "big.txt"
        assert "STUDYRAG_DATA_DIR" in body["details"]["hint"]
        # The partial copy is gone and its space with it.
        assert _leftovers(data / "files" / ".incoming") == []
        assert free_mb(small_disk) > free - 4

        # Several files: the one that does not fit is rejected, the others are kept.
        nb = http.post("/api/notebooks", json={"name": "full disk"}).json()["id"]
        r = http.post(
            f"/api/notebooks/{nb}/documents",
            content=form(
                [
                    ("files", "a.txt", b"Glaciers carve valleys into U shapes over millennia."),
                    ("files", "big.txt", HUGE),
                    ("files", "b.txt", b"Tariffs are taxes on imported goods, paid at the border."),
                ]
            ),
            headers=FORM,
        )
        assert r.status_code == 202, r.text
        docs = r.json()["documents"]
        assert [(d["filename"], d["status"]) for d in docs] == [
            ("a.txt", "queued"),
            ("big.txt", "rejected"),
            ("b.txt", "queued"),
        ]
        assert docs[1]["error_code"] == "DOC_015"
        deadline = time.monotonic() + 120
        while True:
            listed = http.get(f"/api/notebooks/{nb}/documents").json()["items"]
            if {d["status"] for d in listed} == {"completed"}:
                break
            assert time.monotonic() < deadline, listed
            time.sleep(0.2)
        assert sorted(d["filename"] for d in listed) == ["a.txt", "b.txt"]

        # Nothing stored before was lost, and the server still answers everything.
        after = {d["id"]: d for d in http.get("/api/documents").json()["items"]}
        for d in before:
            assert after[d["id"]]["status"] == "completed"
            assert after[d["id"]]["chunk_count"] == d["chunk_count"]
        hits = http.post("/api/search", json={"query": "chlorophyll", "mode": "hybrid"})
        assert hits.status_code == 200, hits.text
        assert hits.json()["results"][0]["filename"] == "plants.md"
        assert http.get("/health").status_code == 200
        assert _leftovers(data / "files" / ".incoming") == []


async def test_a_local_file_that_does_not_fit_is_disk_full(
    small_disk: Path, tmp_path: Path
) -> None:
    """The CLI's path (`studyrag ingest` copies the file in): DOC_015 too, not 'cannot be read'."""
    source = tmp_path / "big.txt"
    with source.open("wb") as out:
        out.truncate(HUGE)  # sparse: costs the test's disk nothing
    store = OriginalStore(small_disk / "cli-files")
    with pytest.raises(DiskFull) as info:
        await store.save_file(source)
    assert info.value.error_code == "DOC_015" and info.value.status_code == 507
    assert isinstance(info.value.__cause__, OSError)
    assert _leftovers(small_disk / "cli-files") == []


@pytest.fixture
def chat_server(small_disk: Path) -> Iterator[LiveServer]:
    """A server with the real chat model whose database lives on the small disk."""
    settings = server_settings(small_disk / "chat")
    settings.llm.max_tokens = 4
    with run_server(settings) as server:
        yield server


def fill(disk: Path) -> Path:
    """A file that takes every byte left on `disk` (unbuffered: each write is refused alone)."""
    filler = disk / "filler"
    for size in (1 << 20, 4096, 1):
        with filler.open("ab", buffering=0) as out:
            try:
                while True:
                    out.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == 28, exc  # ENOSPC
    return filler


def test_a_question_on_a_full_disk_is_refused_clearly_and_stores_nothing(
    chat_server: LiveServer, small_disk: Path
) -> None:
    import asyncio
    import json

    import websockets

    question = {"message": "Why do leaves look green?", "max_tokens": 2}
    with httpx.Client(base_url=chat_server.base, timeout=300) as http:
        cid = http.post("/api/chat/conversations", json={}).json()["id"]
        ok = http.post("/api/chat/message", json=question | {"conversation_id": cid})
        assert ok.status_code == 200, ok.text

        def messages() -> list[tuple[str, str, str]]:
            items = http.get(f"/api/chat/conversations/{cid}/messages").json()["items"]
            return [(m["id"], m["status"], m["content"]) for m in items]

        before = messages()
        filler = fill(small_disk)
        try:
            # REST: 507 in the house shape, saying what to do; nothing stored.
            r = http.post("/api/chat/message", json=question | {"conversation_id": cid})
            assert r.status_code == 507, r.text
            body = r.json()
            assert set(body) == {"error_code", "message", "details", "request_id"}
            assert body["error_code"] == "GEN_002" and "disk is full" in body["message"]
            assert "STUDYRAG_DATA_DIR" in body["details"]["hint"]
            # SSE: the same error, before any event of an answer.
            with http.stream("POST", f"/api/chat/stream/{cid}", json=question) as sse:
                sse.read()
                assert sse.status_code == 507, sse.text
                assert sse.json()["error_code"] == "GEN_002"

            # WebSocket: an error frame; the socket stays open.
            async def over_ws() -> list[dict[str, object]]:
                async with websockets.connect(chat_server.ws_url(cid)) as ws:
                    assert json.loads(await ws.recv())["type"] == "connected"
                    await ws.send(json.dumps({"type": "message", "content": question["message"]}))
                    got = [json.loads(await asyncio.wait_for(ws.recv(), 120))]
                    await ws.send(json.dumps({"type": "ping"}))
                    got.append(json.loads(await asyncio.wait_for(ws.recv(), 120)))
                    return got

            error, pong = asyncio.run(over_ws())
            assert error["type"] == "error" and error["error_code"] == "GEN_002", error
            assert pong["type"] == "pong", pong
            assert messages() == before, "nothing of a refused question may be stored"
        finally:
            filler.unlink()
        # Space again: the same conversation goes on.
        again = http.post("/api/chat/message", json=question | {"conversation_id": cid})
        assert again.status_code == 200, again.text
        assert messages()[: len(before)] == before and len(messages()) == len(before) + 2
