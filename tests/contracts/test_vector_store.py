"""VectorStore contract: every implementation behaves the same (memory, Chroma, Chroma server)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from studyrag.backends.vectors.base import VectorStore
from studyrag.backends.vectors.chroma import ChromaVectorStore
from studyrag.backends.vectors.fake import InMemoryVectorStore
from studyrag.errors import BackendUnavailable
from tests.conftest import free_port


@contextmanager
def running_chroma(
    path: Path, port: int | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real `chroma run` server on 127.0.0.1 (on `port`, else a free one): (URL, process)."""
    exe = Path(sys.executable).with_name("chroma")
    if not exe.exists():
        exe = Path(shutil.which("chroma") or "chroma")
    port = port or free_port()
    proc = subprocess.Popen(
        [str(exe), "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/api/v2/heartbeat", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("chroma run did not start")
            time.sleep(0.3)
        yield f"chroma+http://127.0.0.1:{port}", proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One `chroma run` server for the session."""
    with running_chroma(tmp_path_factory.mktemp("chroma-server")) as (url, _):
        yield url


@pytest.fixture(params=["memory", "chroma-persistent", "chroma-server"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[VectorStore]:
    collection = f"contract-{uuid.uuid4().hex[:8]}"
    if request.param == "memory":
        s: VectorStore = InMemoryVectorStore()
    elif request.param == "chroma-persistent":
        s = ChromaVectorStore(path=tmp_path / "chroma", collection=collection)
    else:
        url = request.getfixturevalue("chroma_server")
        s = ChromaVectorStore(url=url, collection=collection)
    async with s:
        yield s


def _vec(*xs: float) -> list[float]:
    norm = sum(x * x for x in xs) ** 0.5
    return [x / norm for x in xs]


async def test_upsert_query_orders_by_cosine(store: VectorStore) -> None:
    await store.upsert(
        ["1", "2", "3"],
        [_vec(1, 0, 0), _vec(0.9, 0.1, 0), _vec(0, 1, 0)],
        [
            {"document_id": "a", "file_type": "pdf"},
            {"document_id": "a", "file_type": "pdf"},
            {"document_id": "b", "file_type": "md"},
        ],
    )
    hits = await store.query(_vec(1, 0, 0), top_k=3)
    assert [h.id for h in hits] == ["1", "2", "3"]
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert hits[2].score == pytest.approx(0.0, abs=1e-4)
    assert hits[0].metadata["document_id"] == "a"
    bare = await store.query(_vec(1, 0, 0), top_k=3, include_metadata=False)
    assert [(h.id, h.metadata) for h in bare] == [("1", {}), ("2", {}), ("3", {})]


async def test_filters(store: VectorStore) -> None:
    await store.upsert(
        ["1", "2", "3"],
        [_vec(1, 0), _vec(1, 0.1), _vec(1, 0.2)],
        [
            {"document_id": "a", "file_type": "pdf"},
            {"document_id": "b", "file_type": "md"},
            {"document_id": "c", "file_type": "pdf"},
        ],
    )
    only_b = await store.query(_vec(1, 0), top_k=5, where={"document_id": {"$in": ["b"]}})
    assert [h.id for h in only_b] == ["2"]
    pdf_not_a = await store.query(
        _vec(1, 0),
        top_k=5,
        where={"$and": [{"file_type": {"$in": ["pdf"]}}, {"document_id": {"$in": ["c"]}}]},
    )
    assert [h.id for h in pdf_not_a] == ["3"]


async def test_upsert_replaces_and_delete_by_id_and_filter(store: VectorStore) -> None:
    await store.upsert(
        ["1", "2"], [_vec(1, 0), _vec(0, 1)], [{"document_id": "a"}, {"document_id": "b"}]
    )
    await store.upsert(["1"], [_vec(0, 1)], [{"document_id": "a"}])
    assert await store.count() == 2
    hits = await store.query(_vec(0, 1), top_k=2)
    assert {h.id for h in hits} == {"1", "2"}
    assert all(h.score == pytest.approx(1.0, abs=1e-4) for h in hits)
    await store.delete(ids=["2"])
    assert sorted(await store.get_ids()) == ["1"]
    await store.delete(where={"document_id": "a"})
    assert await store.count() == 0
    assert await store.query(_vec(1, 0), top_k=3) == []


async def test_get_ids_with_filter(store: VectorStore) -> None:
    await store.upsert(
        ["1", "2", "3"],
        [_vec(1, 0)] * 3,
        [{"document_id": "a"}, {"document_id": "b"}, {"document_id": "a"}],
    )
    assert sorted(await store.get_ids(where={"document_id": "a"})) == ["1", "3"]


async def test_unreachable_server_is_a_clear_error() -> None:
    store = ChromaVectorStore(url=f"chroma+http://127.0.0.1:{free_port()}", collection="x-col")
    with pytest.raises(BackendUnavailable) as info:
        await store.start()
    assert info.value.error_code == "SEARCH_003"
    assert "127.0.0.1" in info.value.message


async def test_update_metadata_retags_in_place_and_ignores_unknown_ids(store: VectorStore) -> None:
    """The notebook backfill retags old vectors; filters then see the new metadata."""
    await store.upsert(["1", "2"], [_vec(1, 0), _vec(0, 1)], [{"document_id": "a"}] * 2)
    await store.update_metadata(
        ["1", "9"], [{"document_id": "a", "notebook_id": "n1"}, {"document_id": "z"}]
    )
    assert await store.get_ids(where={"notebook_id": "n1"}) == ["1"]
    hits = await store.query(_vec(1, 0), top_k=1, where={"notebook_id": "n1"})
    assert [h.id for h in hits] == ["1"] and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert await store.count() == 2


async def test_get_vectors_returns_stored_vectors_and_skips_unknown_ids(
    store: VectorStore,
) -> None:
    """Notebook export reads the vectors back; they are the ones stored."""
    await store.upsert(["1", "2"], [_vec(1, 0), _vec(0, 1)], [{"document_id": "a"}] * 2)
    got = await store.get_vectors(["2", "1", "9"])
    assert set(got) == {"1", "2"}
    assert got["1"] == pytest.approx(_vec(1, 0), abs=1e-6)
    assert got["2"] == pytest.approx(_vec(0, 1), abs=1e-6)
    assert await store.get_vectors([]) == {}
