"""Uploads are streamed: a chunked body without Content-Length over the limit is refused
while it arrives (413 in the house shape), and nothing is left in the system temp directory
or the data directory."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette import formparsers

from studyrag.config import IngestSettings
from tests.api.conftest import LiveServer, run_server, server_settings

pytestmark = pytest.mark.slow

LIMIT_MB = 1
BOUNDARY = "studyragboundary"


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = server_settings(tmp_path_factory.mktemp("streamed"))
    settings.ingest = IngestSettings(max_file_size_mb=LIMIT_MB)
    with run_server(settings, ingest=False, with_chat=False) as server:
        yield server


def _form(files: list[tuple[str, str, int]], sent: list[int]) -> Iterator[bytes]:
    """A multipart body generated as it is sent (chunked: no Content-Length)."""
    block = b"x" * (256 * 1024)
    for field, name, size in files:
        yield (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{name}"\r\nContent-Type: text/plain\r\n\r\n'
        ).encode()
        left = size
        while left > 0:
            chunk = block[: min(left, len(block))]
            left -= len(chunk)
            sent[0] += len(chunk)
            yield chunk
        yield b"\r\n"
    yield f"--{BOUNDARY}--\r\n".encode()


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


@pytest.fixture
def temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The system temp directory of the server (same process) pointed at an empty folder,
    and the framework's spooling of form files watched: none may happen (anonymous temp
    files leave no name to find afterwards)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    spooled: list[int] = []

    class Watched(formparsers.SpooledTemporaryFile):  # type: ignore[name-defined,misc]
        def write(self, data: bytes) -> int:  # type: ignore[override]
            spooled.append(len(data))
            return super().write(data)

    monkeypatch.setattr(formparsers, "SpooledTemporaryFile", Watched)
    yield tmp_path
    assert sum(spooled) == 0, f"{sum(spooled)} bytes were spooled to a temp file"


def test_chunked_upload_over_the_limit_is_refused_while_it_streams(
    small: LiveServer, temp_dir: Path
) -> None:
    sent = [0]
    huge = 64 << 20
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    with httpx.Client(base_url=small.base, timeout=60) as http:
        r = http.post(
            "/api/documents",
            content=_form([("file", "big.txt", huge)], sent),
            headers=headers,
        )
    assert r.status_code == 413, r.text
    body = r.json()
    assert body["error_code"] == "DOC_002"
    assert body["details"]["hint"]
    assert _leftovers(temp_dir) == []
    data = small.settings.data_dir
    assert _leftovers(data / "files") == []


def test_streamed_form_keeps_the_good_files_and_refuses_the_big_one(
    small: LiveServer, temp_dir: Path
) -> None:
    sent = [0]
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    with httpx.Client(base_url=small.base, timeout=60) as http:
        nb = http.post("/api/notebooks", json={"name": "streamed"}).json()["id"]
        r = http.post(
            f"/api/notebooks/{nb}/documents",
            content=_form(
                [("files", "a.txt", 5000), ("files", "big.txt", 3 << 20), ("files", "b.txt", 7000)],
                sent,
            ),
            headers=headers,
        )
    assert r.status_code == 202, r.text
    docs = r.json()["documents"]
    assert [(d["filename"], d["status"]) for d in docs] == [
        ("a.txt", "queued"),
        ("big.txt", "rejected"),
        ("b.txt", "queued"),
    ]
    assert docs[1]["error_code"] == "DOC_002"
    assert _leftovers(temp_dir) == []
    assert _leftovers(small.settings.data_dir / "files" / ".incoming") == []


def test_a_body_that_is_no_form_is_refused_in_the_house_shape(small: LiveServer) -> None:
    with httpx.Client(base_url=small.base, timeout=60) as http:
        r = http.post("/api/documents", content=b"hello", headers={"Content-Type": "text/plain"})
        assert r.status_code == 422, r.text
        assert r.json()["error_code"] == "DOC_006"
        r = http.post(
            "/api/documents",
            content=f"--{BOUNDARY}--\r\n".encode(),
            headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        )
        assert r.status_code == 422, r.text
