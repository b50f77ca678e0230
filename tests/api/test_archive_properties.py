"""Property tests of notebook import (issue 12) over a real server (uvicorn, SQLite, Chroma,
MiniLM): any zip built from random documents, chunks, originals, conversations and manifest,
whole or damaged in one of many ways, either imports exactly what it holds or is refused
with an NB_ code (4xx) leaving no job, no row, no vector and no file behind; never a 5xx."""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.api.conftest import LiveServer, run_server
from tests.api.test_notebook_archive import archive_settings, snapshot

pytestmark = pytest.mark.slow

STAMP = "2026-03-01T10:00:00+00:00"
# Letters, digits, blanks of several kinds, punctuation, accents: what names and notes hold.
TEXT = st.text(
    alphabet=st.characters(codec="utf-8", categories=("L", "N", "P", "Zs"))
    | st.sampled_from(" \n\t"),
    min_size=1,
    max_size=160,
)
NAMES = st.text(
    alphabet=st.characters(codec="utf-8", categories=("L", "N", "P", "Zs")) | st.just(" "),
    min_size=1,
    max_size=40,
).filter(str.split)  # blanks only: a damaged manifest (see _blank_name)


@st.composite
def documents(draw: st.DrawFn, n: int) -> tuple[dict[str, Any], bytes | None]:
    """An archived document (completed with chunks whose offsets fit its text, or failed
    without), and its original's bytes when the archive keeps one."""
    failed = draw(st.booleans()) and draw(st.booleans())  # a quarter of them
    content = draw(TEXT)
    original = content.encode() if draw(st.booleans()) else None
    sha = hashlib.sha256(original or content.encode()).hexdigest()
    chunks: list[dict[str, Any]] = []
    if not failed:
        cuts = sorted(set(draw(st.lists(st.integers(1, len(content)), min_size=1, max_size=4))))
        starts = [0, *cuts[:-1]]
        for i, (start, end) in enumerate(zip(starts, cuts, strict=True)):
            chunks.append(
                {
                    "index": i,
                    "text": content[start:end],
                    "start_char": start,
                    "end_char": end,
                    "section": draw(st.sampled_from(["", "Intro", "Part 2"])),
                    "token_count": end - start,
                }
            )
    ext = draw(st.sampled_from(["txt", "md"]))
    doc = {
        "id": f"doc{n}",
        "filename": f"{draw(st.from_regex(r'[a-z][a-z0-9_-]{0,11}', fullmatch=True))}.{ext}",
        "file_type": ext,
        "size": len(original or content.encode()),
        "sha256": sha,
        "status": "failed" if failed else "completed",
        "error_code": "DOC_003" if failed else None,
        "error": "no text" if failed else None,
        "content": None if failed else content,
        "chunks": chunks,
    }
    return doc, original


@st.composite
def conversations(draw: st.DrawFn) -> dict[str, Any]:
    count = draw(st.integers(0, 3))
    return {
        "title": draw(TEXT.map(lambda t: t[:200])),
        "status": draw(st.sampled_from(["active", "archived"])),
        "last_seq": count,
        "created_at": STAMP,
        "updated_at": STAMP,
        "messages": [
            {
                "seq": i + 1,
                "role": "user" if i % 2 == 0 else "assistant",
                "content": draw(TEXT),
                "status": "complete",
                "created_at": STAMP,
            }
            for i in range(count)
        ],
    }


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def _manifest(name: str, docs: list[tuple[dict[str, Any], bytes | None]], convs: list[Any]) -> Any:
    return {
        "format": "studyrag-notebook",
        "format_version": 1,
        "created_at": STAMP,
        "notebook": {"name": name, "description": "made by a property test"},
        "documents": [
            {
                "entry": f"documents/{n}.json",
                "filename": doc["filename"],
                "original": f"originals/{doc['sha256']}" if original is not None else None,
                "chunks": len(doc["chunks"]),
            }
            for n, (doc, original) in enumerate(docs)
        ],
        "conversations": [f"conversations/{n}.json" for n in range(len(convs))],
        "entries": {},
    }


def _seal(manifest: Any, entries: dict[str, bytes]) -> dict[str, bytes]:
    """The entries with a manifest that lists each with its size and sha256."""
    manifest["entries"] = {
        name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for name, data in entries.items()
    }
    return {**entries, "manifest.json": _json(manifest)}


def _zip(entries: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return out.getvalue()


# Each damage takes (draw, entries, manifest) and returns the archive's bytes.
Damage = Callable[[st.DrawFn, dict[str, bytes], Any], bytes]


def _resealed(change: Callable[[st.DrawFn, dict[str, bytes], Any], None]) -> Damage:
    """A damage to the contents that the manifest's checksums are made to agree with."""

    def damage(draw: st.DrawFn, entries: dict[str, bytes], manifest: Any) -> bytes:
        change(draw, entries, manifest)
        return _zip(_seal(manifest, {k: v for k, v in entries.items() if k != "manifest.json"}))

    damage.__name__ = change.__name__
    return damage


def _pick(draw: st.DrawFn, entries: dict[str, bytes], prefix: str = "") -> str | None:
    names = sorted(n for n in entries if n != "manifest.json" and n.startswith(prefix))
    return draw(st.sampled_from(names)) if names else None


def _drop_entry(draw: st.DrawFn, entries: dict[str, bytes], manifest: Any) -> bytes:
    name = _pick(draw, entries)
    if name is None:  # nothing but the manifest: drop that
        return _zip({})
    return _zip({k: v for k, v in entries.items() if k != name})


def _extra_entry(draw: st.DrawFn, entries: dict[str, bytes], manifest: Any) -> bytes:
    name = draw(st.sampled_from(["documents/77.json", "conversations/9.json", "notes.txt"]))
    return _zip({**entries, name: b"{}"})


def _flip_byte(draw: st.DrawFn, entries: dict[str, bytes], manifest: Any) -> bytes:
    name = _pick(draw, entries) or "manifest.json"
    data = bytearray(entries[name])
    at = draw(st.integers(0, len(data) - 1))
    data[at] ^= draw(st.integers(1, 255))
    return _zip({**entries, name: bytes(data)})


def _truncate(draw: st.DrawFn, entries: dict[str, bytes], manifest: Any) -> bytes:
    whole = _zip(entries)
    return whole[: draw(st.integers(0, len(whole) - 1))]


def _garbage(draw: st.DrawFn, entries: dict[str, bytes], manifest: Any) -> bytes:
    return draw(st.binary(max_size=200)) + draw(st.sampled_from([b"", b"PK\x03\x04", b"PK"]))


def _unsafe_name(draw: st.DrawFn, entries: dict[str, bytes], manifest: Any) -> bytes:
    name = draw(st.sampled_from(["../evil.json", "/abs.json", "documents/../x", "a\\b", "C:x"]))
    return _zip({**entries, name: b"{}"})


def _manifest_field(draw: st.DrawFn, entries: dict[str, bytes], manifest: Any) -> bytes:
    wrong: Any = draw(
        st.sampled_from(
            [
                ("format_version", 2),
                ("format_version", "1"),
                ("format", "zip"),
                ("notebook", {"name": ""}),
                ("notebook", "Biology"),
                ("documents", {}),
                ("dimensions", -1),
                ("surprise", True),
            ]
        )
    )
    changed = json.loads(entries["manifest.json"])
    changed[wrong[0]] = wrong[1]
    return _zip({**entries, "manifest.json": _json(changed)})


def _blank_name(draw: st.DrawFn, entries: dict[str, bytes], manifest: Any) -> bytes:
    """A notebook name of blanks only (any kind: the import folds them away), or too long."""
    changed = json.loads(entries["manifest.json"])
    changed["notebook"]["name"] = draw(
        st.one_of(
            st.text(alphabet=st.sampled_from(" \t\n\u00a0\u2002\u3000"), min_size=1),
            st.just("x" * 201),
        )
    )
    return _zip({**entries, "manifest.json": _json(changed)})


def _not_json(draw: st.DrawFn, entries: dict[str, bytes], manifest: Any) -> bytes:
    name = _pick(draw, entries, "documents/") or _pick(draw, entries, "conversations/")
    if name is None:
        return _zip({**entries, "manifest.json": b"{not json"})
    rest = {k: v for k, v in entries.items() if k != "manifest.json"}
    rest[name] = draw(st.sampled_from([b"{not json", b"[]", b"null", b'{"id": 1}', b"\xff\xfe"]))
    return _zip(_seal(manifest, rest))


def _bad_chunk(draw: st.DrawFn, entries: dict[str, bytes], manifest: Any) -> None:
    name = _pick(draw, entries, "documents/")
    if name is None:
        entries["conversations/99.json"] = b"{}"  # listed below, and not a conversation
        manifest["conversations"].append("conversations/99.json")
        return
    doc = json.loads(entries[name])
    how = draw(st.sampled_from(["past_end", "reversed", "index", "count", "status"]))
    if how == "past_end" or not doc["chunks"]:
        doc["chunks"].append(
            {"index": len(doc["chunks"]), "text": "x", "start_char": 0, "end_char": 10**6}
        )
    elif how == "reversed":
        doc["chunks"][0]["start_char"] = doc["chunks"][0]["end_char"] + 1
    elif how == "index":
        doc["chunks"][0]["index"] = 5
    elif how == "count":
        doc["chunks"].pop()
    else:
        doc["status"] = "cancelled"
    entries[name] = _json(doc)


def _bad_message(draw: st.DrawFn, entries: dict[str, bytes], manifest: Any) -> None:
    name = _pick(draw, entries, "conversations/")
    if name is None:
        manifest["conversations"].append("conversations/5.json")
        return  # names an entry the archive does not hold
    conv = json.loads(entries[name])
    how = draw(st.sampled_from(["seq", "role", "status", "source", "field"]))
    message = {"seq": 1, "role": "user", "content": "q", "status": "complete", "created_at": STAMP}
    if how == "seq":
        conv["messages"] = [message, message]
    elif how == "role":
        conv["messages"] = [message | {"role": "robot"}]
    elif how == "status":
        conv["messages"] = [message | {"status": "lost"}]
    elif how == "source":
        conv["messages"] = [message | {"sources": [1]}]
    else:
        conv["surprise"] = 1
    conv["last_seq"] = max(1, conv["last_seq"])
    entries[name] = _json(conv)


DAMAGES: list[Damage] = [
    _drop_entry,
    _extra_entry,
    _flip_byte,
    _truncate,
    _garbage,
    _unsafe_name,
    _manifest_field,
    _blank_name,
    _not_json,
    _resealed(_bad_chunk),
    _resealed(_bad_message),
]


@st.composite
def archives(draw: st.DrawFn, damage: Damage | None = None) -> tuple[bytes, dict[str, Any]]:
    """(zip bytes, what it holds), whole or with `damage` done to it."""
    docs = [draw(documents(n)) for n in range(draw(st.integers(0, 3)))]
    convs = draw(st.lists(conversations(), max_size=2))
    name = draw(NAMES)
    entries: dict[str, bytes] = {}
    for n, (doc, original) in enumerate(docs):
        entries[f"documents/{n}.json"] = _json(doc)
        if original is not None:
            entries[f"originals/{doc['sha256']}"] = original
    for n, conv in enumerate(convs):
        entries[f"conversations/{n}.json"] = _json(conv)
    manifest = _manifest(name, docs, convs)
    whole = _seal(manifest, entries)
    held = {"name": name, "documents": [d for d, _ in docs], "convs": convs}
    if damage is None:
        return _zip(whole), held
    return damage(draw, whole, json.loads(whole["manifest.json"])), held


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = archive_settings(tmp_path_factory.mktemp("archive-props") / "data")
    with run_server(settings, ingest=True, with_chat=False) as live:
        yield live


def _finished(http: httpx.Client, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = http.get(f"/api/jobs/{job_id}").json()
        if job["status"] in ("completed", "failed", "cancelled"):
            return dict(job)
        time.sleep(0.05)
    raise TimeoutError(job_id)


def _imported(http: httpx.Client, notebook_id: str) -> dict[str, Any]:
    docs = http.get(f"/api/notebooks/{notebook_id}/documents", params={"limit": 500}).json()
    documents = []
    for d in sorted(docs["items"], key=lambda d: d["filename"]):
        text = http.get(f"/api/documents/{d['id']}/text")
        documents.append(
            (
                d["filename"],
                d["status"],
                d["chunk_count"],
                text.json()["text"] if d["status"] == "completed" else None,
            )
        )
    listed = http.get("/api/chat/conversations", params={"notebook_id": notebook_id}).json()
    convs = []
    for conv in listed["items"]:
        messages = http.get(f"/api/chat/conversations/{conv['id']}/messages").json()["items"]
        convs.append((conv["title"], tuple((m["seq"], m["content"]) for m in messages)))
    return {"documents": sorted(documents, key=_order), "conversations": sorted(convs)}


def _order(doc: tuple[Any, ...]) -> tuple[Any, ...]:
    return (*doc[:3], doc[3] or "")


def _expected(held: dict[str, Any]) -> dict[str, Any]:
    documents = sorted(
        ((d["filename"], d["status"], len(d["chunks"]), d["content"]) for d in held["documents"]),
        key=_order,
    )
    convs = sorted(
        (c["title"], tuple((m["seq"], m["content"]) for m in c["messages"])) for c in held["convs"]
    )
    return {"documents": documents, "conversations": convs}


def _post(server: LiveServer, data: bytes) -> tuple[httpx.Response, dict[str, Any]]:
    """The import's answer, and the library (every row, vector and file) as it was before."""
    before = snapshot(server.settings.data_dir)
    with httpx.Client(base_url=server.base, timeout=120) as http:
        reply = http.post(
            "/api/notebooks/import", files={"file": ("nb.zip", data, "application/zip")}
        )
    assert reply.status_code < 500, reply.text
    return reply, before


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(archive=archives())
def test_a_whole_archive_imports_exactly_what_it_holds(
    server: LiveServer, archive: tuple[bytes, dict[str, Any]]
) -> None:
    data, held = archive
    reply, _ = _post(server, data)
    assert reply.status_code == 202, reply.text
    with httpx.Client(base_url=server.base, timeout=120) as http:
        job = _finished(http, reply.json()["job_id"])
        assert job["status"] == "completed", job
        notebook = job["metadata"]["notebook_id"]
        book = http.get(f"/api/notebooks/{notebook}").json()
        assert book["name"].startswith(" ".join(held["name"].split())[:30]), book
        assert _imported(http, notebook) == _expected(held)


@pytest.mark.parametrize("damage", DAMAGES, ids=lambda d: d.__name__.strip("_"))
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_damaged_archive_is_refused_and_changes_nothing(
    server: LiveServer, damage: Damage, data: st.DataObject
) -> None:
    archive, _ = data.draw(archives(damage))
    reply, before = _post(server, archive)
    assert reply.status_code != 202, "a damaged archive was accepted"
    body = reply.json()
    event(f"{reply.status_code} {body['error_code']}")
    assert 400 <= reply.status_code < 500 and re.fullmatch(r"NB_\d{3}", body["error_code"]), body
    assert set(body) == {"error_code", "message", "details", "request_id"}, body
    assert body["message"] and body["details"]["hint"], body
    assert snapshot(server.settings.data_dir) == before, body
