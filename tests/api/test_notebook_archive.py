"""Notebook export and import over real servers (uvicorn, real MiniLM, real Chroma, real
SQLite, real SmolLM2 for the conversation): the round trip gives the same notebook, and every
bad archive is refused with its code, leaving the database, vectors and files as they were."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import stat
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from studyrag.config import ArchiveSettings, Settings
from tests.api.conftest import NOTES, LiveServer, run_server, server_settings
from tests.api.test_chat_rest import assert_error
from tests.ingest.fixtures import make_pdf

pytestmark = pytest.mark.slow

NAME = "Biology 101"
QUERIES = [
    "Why do leaves look green?",
    "mitochondria ATP energy",
    "cellulose cell walls",
    "What does the plant release?",
]
GLOSSARY = "Glossary\n\nChlorophyll: the green pigment.\nStomata: pores in the leaf surface.\n"


def archive_settings(data_dir: Path) -> Settings:
    settings = server_settings(data_dir)
    # Small limits, so oversized archives and bombs can be made in a test.
    settings.archive = ArchiveSettings(max_archive_mb=4, max_unpacked_mb=16, max_ratio=100)
    return settings


def wait_job(http: httpx.Client, job_id: str, within: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        job = http.get(f"/api/jobs/{job_id}").json()
        if job["status"] in ("completed", "failed", "cancelled"):
            return dict(job)
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} did not finish")


def notebook_view(http: httpx.Client, notebook_id: str) -> dict[str, Any]:
    """Everything a user sees of a notebook, without the ids the import changes."""
    docs = http.get(f"/api/notebooks/{notebook_id}/documents").json()["items"]
    documents = []
    for d in sorted(docs, key=lambda d: d["filename"]):
        detail = http.get(f"/api/documents/{d['id']}").json()
        text = http.get(f"/api/documents/{d['id']}/text").json()["text"]
        chunks = []
        for c in detail["chunks"]:
            full = http.get(f"/api/chunks/{c['id']}").json()
            chunks.append(
                {k: full[k] for k in ("index", "page", "section", "start", "end", "text", "rects")}
            )
        documents.append(
            {
                "filename": d["filename"],
                "file_type": d["file_type"],
                "sha256": d["sha256"],
                "size": d["size"],
                "status": d["status"],
                "chunk_count": d["chunk_count"],
                "metadata": d["metadata"],
                "text": text,
                "chunks": chunks,
                "original": hashlib.sha256(
                    http.get(f"/api/documents/{d['id']}/file").content
                ).hexdigest(),
            }
        )
    conversations = []
    listed = http.get("/api/chat/conversations", params={"notebook_id": notebook_id}).json()
    for conv in sorted(listed["items"], key=lambda c: c["created_at"]):
        messages = http.get(f"/api/chat/conversations/{conv['id']}/messages").json()["items"]
        conversations.append(
            {
                "title": conv["title"],
                "status": conv["status"],
                "messages": [
                    {
                        "seq": m["seq"],
                        "role": m["role"],
                        "content": m["content"],
                        "status": m["status"],
                        # Where each source points, by what it shows, not by id.
                        "sources": [source_target(http, s) for s in m["sources"]],
                    }
                    for m in messages
                ],
            }
        )
    return {"documents": documents, "conversations": conversations}


def source_target(http: httpx.Client, source: dict[str, Any]) -> dict[str, Any]:
    chunk = http.get(f"/api/chunks/{source['chunk_id']}").json()
    doc = http.get(f"/api/documents/{source['document_id']}").json()
    assert chunk["document_id"] == source["document_id"], (chunk, source)
    return {
        "index": source["index"],
        "filename": doc["filename"],
        "chunk_text": chunk["text"],
        "page": source.get("page"),
        "score": source["score"],
    }


def top10(http: httpx.Client, notebook_id: str) -> list[list[tuple[Any, ...]]]:
    out = []
    for query in QUERIES:
        body = {"query": query, "top_k": 10, "mode": "hybrid", "notebook_id": notebook_id}
        reply = http.post("/api/search", json=body)
        assert reply.status_code == 200, reply.text
        out.append(
            [
                (r["filename"], r["page"], r["start"], r["end"], r["text"], r["score"])
                for r in reply.json()["results"]
            ]
        )
    return out


def same_ranking(got: list[list[tuple[Any, ...]]], want: list[list[tuple[Any, ...]]]) -> None:
    assert [[r[:5] for r in q] for q in got] == [[r[:5] for r in q] for q in want]
    for q_got, q_want in zip(got, want, strict=True):
        assert [r[5] for r in q_got] == pytest.approx([r[5] for r in q_want], abs=1e-4)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A notebook built on server A (a PDF, notes, a glossary, a conversation with cited
    sources), what it looks like there, and its archives with and without vectors."""
    root = tmp_path_factory.mktemp("archive-source")
    pdf = make_pdf(root).read_bytes()
    with (
        run_server(archive_settings(root / "data"), ingest=False) as a,
        httpx.Client(base_url=a.base, timeout=300) as http,
    ):
        nb = http.post("/api/notebooks", json={"name": NAME, "description": "Plants"}).json()
        files = [("plants.pdf", pdf), ("notes.md", NOTES.encode()), ("glossary.txt", GLOSSARY)]
        accepted = http.post(
            f"/api/notebooks/{nb['id']}/documents",
            files=[("files", (n, d)) for n, d in files],
        )
        assert accepted.status_code == 202, accepted.text
        assert wait_job(http, accepted.json()["job_id"])["status"] == "completed"
        answer = http.post(
            "/api/chat/message",
            json={
                "message": "Why do leaves look green?",
                "notebook_id": nb["id"],
                "max_tokens": 12,
            },
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["message"]["sources"], "the answer should cite the notebook"
        view = notebook_view(http, nb["id"])
        search = top10(http, nb["id"])
        archives = {}
        for vectors in (True, False):
            reply = http.get(f"/api/notebooks/{nb['id']}/export", params={"vectors": vectors})
            assert reply.status_code == 200, reply.text
            assert reply.headers["content-type"] == "application/zip"
            disposition = reply.headers["content-disposition"]
            assert disposition.startswith('attachment; filename="Biology 101.studyrag.zip"')
            archives[vectors] = reply.content
        assert_error(http.get("/api/notebooks/nope/export"), 404, "NB_001")
        yield {"view": view, "search": search, "archives": archives, "root": root}


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Server B on a fresh data directory."""
    with run_server(archive_settings(tmp_path_factory.mktemp("fresh") / "data"), ingest=False) as b:
        yield b


def post_archive(http: httpx.Client, data: bytes, name: str = "nb.zip") -> httpx.Response:
    return http.post("/api/notebooks/import", files={"file": (name, data, "application/zip")})


def test_round_trip_gives_the_same_notebook(exported: dict[str, Any], fresh: LiveServer) -> None:
    with zipfile.ZipFile(io.BytesIO(exported["archives"][True])) as zf:
        names = zf.namelist()
        manifest = json.loads(zf.read("manifest.json"))
    assert names[-1] == "manifest.json" and manifest["format_version"] == 1
    assert {n.split("/")[0] for n in names} == {
        "documents", "originals", "vectors", "conversations", "manifest.json"
    }  # fmt: skip
    with zipfile.ZipFile(io.BytesIO(exported["archives"][False])) as zf:
        assert not [n for n in zf.namelist() if n.startswith("vectors/")]

    with httpx.Client(base_url=fresh.base, timeout=300) as http:
        first = post_archive(http, exported["archives"][True])
        assert first.status_code == 202, first.text
        assert first.json()["name"] == NAME and first.json()["documents"] == 3
        job = wait_job(http, first.json()["job_id"])
        assert job["status"] == "completed", job
        assert job["metadata"]["vectors"] == "archive" and job["kind"] == "import_notebook"
        with_vectors = job["notebook_id"]
        assert http.get(f"/api/notebooks/{with_vectors}").json()["name"] == NAME
        assert notebook_view(http, with_vectors) == exported["view"]
        same_ranking(top10(http, with_vectors), exported["search"])

        # The same archive again: the name is taken, so it gets a suffix.
        second = post_archive(http, exported["archives"][False])
        job = wait_job(http, second.json()["job_id"])
        assert job["status"] == "completed" and job["metadata"]["vectors"] == "recomputed"
        recomputed = job["notebook_id"]
        assert http.get(f"/api/notebooks/{recomputed}").json()["name"] == f"{NAME} (2)"
        assert notebook_view(http, recomputed) == exported["view"]
        # Alone in the library again (BM25 counts every notebook's chunks), the recomputed
        # vectors rank the same passages with the same scores.
        gone = http.delete(f"/api/notebooks/{with_vectors}")
        assert wait_job(http, gone.json()["job_id"])["status"] == "completed"
        same_ranking(top10(http, recomputed), exported["search"])
        # The originals are kept once, shared by nobody else now: still served.
        assert notebook_view(http, recomputed) == exported["view"]


# --- bad archives ------------------------------------------------------------------------
def snapshot(data_dir: Path) -> dict[str, Any]:
    """Every SQL row, every vector, every file of a data directory."""
    tables: dict[str, Any] = {}
    with sqlite3.connect(f"file:{data_dir / 'studyrag.db'}?mode=ro", uri=True) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for name in names:
            tables[name] = sorted(map(repr, conn.execute(f'SELECT * FROM "{name}"').fetchall()))
    chroma = sorted((data_dir / "chroma").glob("*.sqlite3"))[0]
    with sqlite3.connect(f"file:{chroma}?mode=ro", uri=True) as conn:
        vectors = sorted(conn.execute("SELECT embedding_id FROM embeddings").fetchall())
    files = {
        str(p.relative_to(data_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(data_dir.rglob("*"))
        if p.is_file()
        and not p.name.startswith(("studyrag.db", "chroma.sqlite3"))
        and p.name != "server.json"
    }
    return {"tables": tables, "vectors": vectors, "files": files}


def rezip(good: bytes, change: Any) -> bytes:
    """A copy of an archive with `change(entries)` applied to {name: bytes}."""
    with zipfile.ZipFile(io.BytesIO(good)) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    change(entries)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return out.getvalue()


def with_manifest(good: bytes, **fields: Any) -> bytes:
    def change(entries: dict[str, bytes]) -> None:
        manifest = json.loads(entries["manifest.json"])
        manifest.update(fields)
        entries["manifest.json"] = json.dumps(manifest).encode()

    return rezip(good, change)


def with_entry(good: bytes, info: zipfile.ZipInfo, data: bytes) -> bytes:
    out = io.BytesIO(good)
    with zipfile.ZipFile(out, "a") as zf:
        zf.writestr(info, data)
    return out.getvalue()


def symlink_entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def zeros_archive(count: int, size: int) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(count):
            zf.writestr(f"originals/{hashlib.sha256(str(i).encode()).hexdigest()}", b"\0" * size)
    return out.getvalue()


def bad_archives(good: bytes) -> list[tuple[str, bytes, int, str]]:
    """(what, bytes, HTTP status, error code) of every kind of bad archive."""

    def tamper(entries: dict[str, bytes]) -> None:
        doc = json.loads(entries["documents/0.json"])
        doc["content"] = "something else " + (doc["content"] or "")
        entries["documents/0.json"] = json.dumps(doc).encode()

    def bad_offsets(entries: dict[str, bytes]) -> None:
        # Consistent checksums, inconsistent content: the chunk points past the text.
        doc = json.loads(entries["documents/1.json"])
        doc["chunks"][0]["end_char"] = 10**9
        entries["documents/1.json"] = data = json.dumps(doc).encode()
        manifest = json.loads(entries["manifest.json"])
        manifest["entries"]["documents/1.json"] = {
            "size": len(data), "sha256": hashlib.sha256(data).hexdigest()
        }  # fmt: skip
        entries["manifest.json"] = json.dumps(manifest).encode()

    big = io.BytesIO()
    with zipfile.ZipFile(big, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("manifest.json", b"{}")
        zf.writestr("originals/" + "0" * 64, hashlib.sha512().digest() * (5 << 20 >> 6))
    return [
        ("truncated", good[: len(good) // 2], 422, "NB_006"),
        ("cut at the end", good[:-10], 422, "NB_006"),
        ("not a zip", b"%PDF-1.4 definitely not a zip", 422, "NB_005"),
        ("empty", b"", 422, "NB_005"),
        ("no manifest", rezip(good, lambda e: e.pop("manifest.json")), 422, "NB_005"),
        ("manifest not JSON", rezip(good, lambda e: e.update({"manifest.json": b"{"})), 422,
         "NB_005"),
        ("tampered entry", rezip(good, tamper), 422, "NB_005"),
        ("chunk outside its text", rezip(good, bad_offsets), 422, "NB_005"),
        ("unknown entry", with_entry(good, zipfile.ZipInfo("notes.txt"), b"hi"), 422, "NB_005"),
        ("newer version", with_manifest(good, format_version=2), 422, "NB_007"),
        ("version zero", with_manifest(good, format_version=0), 422, "NB_007"),
        ("dot-dot", with_entry(good, zipfile.ZipInfo("../../evil.txt"), b"x"), 422, "NB_008"),
        ("inner dot-dot", with_entry(good, zipfile.ZipInfo("originals/../x"), b"x"), 422,
         "NB_008"),
        ("absolute", with_entry(good, zipfile.ZipInfo("/tmp/evil.txt"), b"x"), 422, "NB_008"),
        ("drive letter", with_entry(good, zipfile.ZipInfo("C:/evil.txt"), b"x"), 422, "NB_008"),
        ("symlink", with_entry(good, symlink_entry("originals/" + "a" * 64), b"/etc/passwd"),
         422, "NB_008"),
        ("archive over the limit", big.getvalue(), 413, "NB_009"),
        ("unpacks over the limit", zeros_archive(17, 1 << 20), 413, "NB_009"),
        ("decompression bomb", zeros_archive(1, 12 << 20), 413, "NB_010"),
    ]  # fmt: skip


def test_bad_archives_are_refused_and_change_nothing(
    exported: dict[str, Any], fresh: LiveServer
) -> None:
    data_dir = fresh.settings.data_dir
    good = exported["archives"][False]
    with httpx.Client(base_url=fresh.base, timeout=300) as http:
        # Something to lose: a notebook of its own, with a document.
        nb = http.post("/api/notebooks", json={"name": "Keep me"}).json()
        up = http.post(
            f"/api/notebooks/{nb['id']}/documents", files=[("files", ("keep.md", NOTES))]
        )
        wait_job(http, up.json()["job_id"])
        before = snapshot(data_dir)
        assert before["vectors"] and before["files"]
        for what, data, status, code in bad_archives(good):
            reply = post_archive(http, data)
            assert reply.status_code == status, (what, reply.text)
            body = reply.json()
            assert body["error_code"] == code, (what, body)
            assert body["message"] and body["details"]["hint"], (what, body)
            assert snapshot(data_dir) == before, what
        missing = http.post("/api/notebooks/import", files={"other": ("x.zip", good)})
        assert_error(missing, 422, "NB_003")
        assert snapshot(data_dir) == before


async def test_export_is_streamed(exported: dict[str, Any], fresh: LiveServer) -> None:
    """Sent as it is built (chunked, no length known in advance), and a zip on arrival."""
    async with httpx.AsyncClient(base_url=fresh.base, timeout=300) as http:
        books = (await http.get("/api/notebooks")).json()["items"]
        target = next(b for b in books if b["documents"] and not b["is_default"])
        async with http.stream("GET", f"/api/notebooks/{target['id']}/export") as reply:
            assert reply.status_code == 200
            assert "content-length" not in reply.headers
            assert reply.headers.get("transfer-encoding") == "chunked"
            body = b"".join([p async for p in reply.aiter_bytes()])
        with zipfile.ZipFile(io.BytesIO(body)) as zf:
            assert zf.testzip() is None


def test_cli_goes_through_the_running_server(
    exported: dict[str, Any], fresh: LiveServer, tmp_path: Path
) -> None:
    """With a server up for the data directory, export and import are its routes and job."""
    from tests.e2e.test_cli import lines, run

    data_dir = fresh.settings.data_dir
    archive = tmp_path / "in.zip"
    archive.write_bytes(exported["archives"][True])
    imported = run("notebooks", "import", str(archive), "--json", data_dir=data_dir, check=True)
    (job,) = lines(imported.stdout)
    assert job["server"] == fresh.base and job["status"] == "completed"
    with httpx.Client(base_url=fresh.base, timeout=60) as http:
        assert http.get(f"/api/jobs/{job['job_id']}").json()["kind"] == "import_notebook"
        assert http.get(f"/api/notebooks/{job['notebook_id']}").json()["name"] == job["name"]
    out = tmp_path / "out.zip"
    proc = run(
        "notebooks", "export", job["name"], "-o", str(out), "--json", data_dir=data_dir, check=True
    )
    assert lines(proc.stdout)[0]["server"] == fresh.base
    with zipfile.ZipFile(out) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    assert manifest["notebook"]["name"] == NAME and len(manifest["documents"]) == 3
    again = run("notebooks", "import", str(archive), data_dir=data_dir)
    assert again.returncode == 0, again.stderr  # the same archive again: a suffixed name
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    refused = run("notebooks", "import", str(bad), data_dir=data_dir)
    assert refused.returncode == 1 and "NB_005" in refused.stderr
