"""Notebooks, background uploads with live progress, originals and passage views, over a real
server (uvicorn on 127.0.0.1, real MiniLM, real Chroma, real SQLite) and real clients."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.api.conftest import LiveServer
from tests.api.test_chat_rest import assert_error
from tests.ingest.fixtures import make_pdf

pytestmark = pytest.mark.slow

ASTRONOMY = """# Astronomy notes
## Pulsars
A pulsar is a rotating neutron star that emits beams of radio waves from its magnetic poles.
Jocelyn Bell Burnell discovered the first pulsar in 1967 at Cambridge.
"""
GEOLOGY = """# Geology notes
## Basalt
Basalt is a fine-grained volcanic rock formed from the rapid cooling of lava rich in
magnesium and iron. Most of the ocean floor is made of basalt.
"""


async def create_notebook(http: httpx.AsyncClient, name: str) -> dict[str, Any]:
    response = await http.post("/api/notebooks", json={"name": name})
    assert response.status_code == 201, response.text
    return dict(response.json())


async def upload(
    http: httpx.AsyncClient, notebook_id: str, *files: tuple[str, bytes]
) -> dict[str, Any]:
    response = await http.post(
        f"/api/notebooks/{notebook_id}/documents",
        files=[("files", (name, data)) for name, data in files],
    )
    assert response.status_code == 202, response.text
    return dict(response.json())


async def wait_job(http: httpx.AsyncClient, job_id: str, within: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        job = (await http.get(f"/api/jobs/{job_id}")).json()
        if job["status"] in ("completed", "failed", "cancelled"):
            return dict(job)
        await asyncio.sleep(0.2)
    raise TimeoutError(f"job {job_id} did not finish")


class NotebookSocket:
    """A real WebSocket client on /ws/notebooks/{id} that keeps every event."""

    def __init__(self, connection: websockets.ClientConnection) -> None:
        self.connection = connection
        self.events: list[dict[str, Any]] = []

    async def until(self, test: Any, within: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while True:
            raw = await asyncio.wait_for(self.connection.recv(), deadline - time.monotonic())
            event = json.loads(raw)
            self.events.append(event)
            if test(event):
                return dict(event)

    async def drain(self, seconds: float) -> None:
        try:
            while True:
                raw = await asyncio.wait_for(self.connection.recv(), seconds)
                self.events.append(json.loads(raw))
        except TimeoutError:
            return


@asynccontextmanager
async def notebook_socket(live: LiveServer, notebook_id: str) -> AsyncIterator[NotebookSocket]:
    url = f"ws://127.0.0.1:{live.port}/ws/notebooks/{notebook_id}"
    async with websockets.connect(url) as connection:
        sock = NotebookSocket(connection)
        ready = await sock.until(lambda e: True, within=30)
        assert ready["type"] == "ready" and ready["notebook_id"] == notebook_id
        yield sock


def finished(document_id: str) -> Any:
    return lambda e: (
        e.get("type") == "document_updated"
        and e.get("document_id") == document_id
        and e.get("status") in ("completed", "failed", "cancelled")
    )


async def test_notebook_crud_counts_and_errors(http: httpx.AsyncClient) -> None:
    listed = (await http.get("/api/notebooks")).json()
    default = listed["items"][0]
    assert default["is_default"] and default["documents"] >= 1  # plants.md of the fixture
    nb = await create_notebook(http, "Crud 101")
    assert (nb["documents"], nb["conversations"], nb["size_bytes"]) == (0, 0, 0)
    assert_error(await http.post("/api/notebooks", json={"name": "crud  101"}), 409, "NB_002")
    assert_error(await http.post("/api/notebooks", json={"name": "   "}), 422, "NB_003")
    renamed = await http.put(f"/api/notebooks/{nb['id']}", json={"name": "Crud 102"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "Crud 102"
    assert_error(await http.get("/api/notebooks/nope"), 404, "NB_001")
    assert_error(await http.delete(f"/api/notebooks/{default['id']}"), 409, "NB_004")
    assert_error(
        await http.post("/api/search", json={"query": "x", "notebook_id": "nope"}), 404, "NB_001"
    )
    assert_error(await http.get("/api/jobs/nope"), 404, "JOB_001")


async def test_upload_progress_isolation_and_source_selection(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    astro = await create_notebook(http, "Astronomy")
    geo = await create_notebook(http, "Geology")
    async with (
        notebook_socket(live, astro["id"]) as astro_ws,
        notebook_socket(live, geo["id"]) as geo_ws,
    ):
        accepted = await upload(
            http,
            astro["id"],
            ("astronomy.md", ASTRONOMY.encode()),
            ("slides.pptx", b"PK\x03\x04"),
        )
        by_name = {d["filename"]: d for d in accepted["documents"]}
        assert by_name["astronomy.md"]["status"] == "queued"
        assert (by_name["slides.pptx"]["status"], by_name["slides.pptx"]["error_code"]) == (
            "rejected",
            "DOC_001",
        )
        doc_id = by_name["astronomy.md"]["document_id"]
        done = await astro_ws.until(finished(doc_id))
        assert done["status"] == "completed", done
        await upload(http, geo["id"], ("geology.md", GEOLOGY.encode()))
        await geo_ws.until(lambda e: e.get("status") == "completed")
        await astro_ws.drain(0.5)
    steps = [e for e in astro_ws.events if e.get("document_id") == doc_id and "progress" in e]
    percents = [e["progress"] for e in steps]
    assert percents == sorted(percents) and percents[-1] == 100.0, percents
    assert {"extracting", "chunking", "embedding", "storing", "completed"} <= {
        e["step"] for e in steps
    }
    added = [e for e in astro_ws.events if e["type"] == "document_added"]
    assert [e["document"]["filename"] for e in added] == ["astronomy.md"]
    # Geology's socket heard nothing of astronomy's upload, and the other way round.
    assert all(e.get("notebook_id") == geo["id"] for e in geo_ws.events), geo_ws.events
    assert all(e.get("notebook_id") == astro["id"] for e in astro_ws.events)

    job = (await http.get(f"/api/jobs/{accepted['job_id']}")).json()
    assert job["status"] == "completed" and job["progress"] == 100.0
    listed = (await http.get(f"/api/notebooks/{astro['id']}/documents")).json()
    assert [d["filename"] for d in listed["items"]] == ["astronomy.md"]
    assert listed["items"][0]["step"] == "completed"

    async def names(notebook_id: str | None, query: str, **extra: Any) -> set[str]:
        body: dict[str, Any] = {"query": query, "top_k": 10, **extra}
        if notebook_id:
            body["notebook_id"] = notebook_id
        response = await http.post("/api/search", json=body)
        assert response.status_code == 200, response.text
        return {r["filename"] for r in response.json()["results"]}

    for mode in ("hybrid", "semantic", "lexical"):
        assert await names(astro["id"], "pulsar neutron star basalt", mode=mode) == {"astronomy.md"}
        assert await names(geo["id"], "pulsar neutron star basalt", mode=mode) == {"geology.md"}
        default_hits = await names(None, "pulsar neutron star basalt lava", mode=mode)
        assert not default_hits & {"astronomy.md", "geology.md"}
    # Source selection inside a notebook: an excluded document is never returned.
    other = await upload(
        http, astro["id"], ("pulsars2.md", ASTRONOMY.replace("1967", "67").encode())
    )
    await wait_job(http, other["job_id"])
    only = await names(astro["id"], "pulsar", filters={"document_ids": [doc_id]})
    assert only == {"astronomy.md"}
    counts = (await http.get(f"/api/notebooks/{astro['id']}")).json()
    assert (counts["documents"], counts["documents_completed"]) == (2, 2)
    assert counts["size_bytes"] > len(ASTRONOMY)


async def test_dedupe_per_notebook_and_replacing_a_new_version(http: httpx.AsyncClient) -> None:
    a = await create_notebook(http, "Dedupe A")
    b = await create_notebook(http, "Dedupe B")
    first = await upload(http, a["id"], ("pulsars.md", ASTRONOMY.encode()))
    await wait_job(http, first["job_id"])
    again = await upload(http, a["id"], ("copy.md", ASTRONOMY.encode()))
    assert again["documents"][0]["status"] == "duplicate" and again["job_id"] is None
    elsewhere = await upload(http, b["id"], ("pulsars.md", ASTRONOMY.encode()))
    assert elsewhere["documents"][0]["status"] == "queued"  # the same file in another notebook
    await wait_job(http, elsewhere["job_id"])
    old_id = first["documents"][0]["document_id"]
    edited = ASTRONOMY.replace("1967", "1967, with Antony Hewish")
    newer = await upload(http, a["id"], ("pulsars.md", edited.encode()))
    await wait_job(http, newer["job_id"])
    docs = (await http.get(f"/api/notebooks/{a['id']}/documents")).json()["items"]
    assert [d["id"] for d in docs] == [newer["documents"][0]["document_id"]]
    assert_error(await http.get(f"/api/documents/{old_id}"), 404, "DOC_004")
    hits = (
        await http.post(
            "/api/search", json={"query": "Antony Hewish", "notebook_id": a["id"], "top_k": 10}
        )
    ).json()["results"]
    assert hits and all("Hewish" in r["text"] for r in hits if r["filename"] == "pulsars.md")


async def test_original_file_ranges_text_and_chunk_views(
    http: httpx.AsyncClient, tmp_path: Path
) -> None:
    nb = await create_notebook(http, "Originals")
    pdf = make_pdf(tmp_path).read_bytes()
    accepted = await upload(http, nb["id"], ("biology notes.pdf", pdf), ("g.md", GEOLOGY.encode()))
    await wait_job(http, accepted["job_id"])
    pdf_id, md_id = (d["document_id"] for d in accepted["documents"])

    whole = await http.get(f"/api/documents/{pdf_id}/file")
    assert whole.status_code == 200 and whole.content == pdf
    assert whole.headers["content-type"] == "application/pdf"
    assert whole.headers["accept-ranges"] == "bytes"
    assert 'filename="biology notes.pdf"' in whole.headers["content-disposition"]
    part = await http.get(f"/api/documents/{pdf_id}/file", headers={"range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == pdf[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(pdf)}"
    tail = await http.get(f"/api/documents/{pdf_id}/file", headers={"range": "bytes=-5"})
    assert tail.status_code == 206 and tail.content == pdf[-5:]
    outside = await http.get(
        f"/api/documents/{pdf_id}/file", headers={"range": f"bytes={len(pdf)}-"}
    )
    assert_error(outside, 416, "DOC_010")
    md = await http.get(f"/api/documents/{md_id}/file")
    assert md.content == GEOLOGY.encode() and md.headers["content-type"].startswith("text/markdown")
    assert md.headers["content-security-policy"] == "default-src 'none'; sandbox"
    # An uploaded page is served as text: its script never runs as a page of this origin.
    page = b"<html><body><p>Mica is a sheet silicate.</p><script>alert(1)</script></body></html>"
    html_job = await upload(http, nb["id"], ("evil.html", page))
    await wait_job(http, html_job["job_id"])
    served = await http.get(f"/api/documents/{html_job['documents'][0]['document_id']}/file")
    assert served.content == page
    assert served.headers["content-type"].startswith("text/plain")
    assert "sandbox" in served.headers["content-security-policy"]

    detail = (await http.get(f"/api/documents/{md_id}")).json()
    first = detail["chunks"][0]
    window = (
        await http.get(
            f"/api/documents/{md_id}/text", params={"start": first["start"], "end": first["end"]}
        )
    ).json()
    chunk = (await http.get(f"/api/chunks/{first['id']}")).json()
    assert chunk["text"] == window["text"] and chunk["document_id"] == md_id
    assert chunk["notebook_id"] == nb["id"] and chunk["previous_id"] is None
    quote_at = window["text"].index("volcanic rock") + first["start"]
    quoted = (
        await http.get(
            f"/api/chunks/{first['id']}", params={"start": quote_at, "end": quote_at + 13}
        )
    ).json()
    assert quoted["quote"] == {"start": quote_at, "end": quote_at + 13, "text": "volcanic rock"}
    assert quoted["rects"] is None  # not a PDF
    assert_error(
        await http.get(f"/api/chunks/{first['id']}", params={"start": 5, "end": 10**6}),
        422,
        "DOC_009",
    )
    assert_error(
        await http.get(f"/api/documents/{md_id}/text", params={"start": 10**6}), 422, "DOC_009"
    )
    assert_error(await http.get("/api/chunks/999999999"), 404, "DOC_012")

    # PDF: the quoted words are drawn on their page, and that page renders as an image.
    pdf_doc = (await http.get(f"/api/documents/{pdf_id}")).json()
    page2 = next(c for c in pdf_doc["chunks"] if c["page"] == 2)
    text = (await http.get(f"/api/chunks/{page2['id']}")).json()["text"]
    at = page2["start"] + text.index("Chlorophyll")
    view = (
        await http.get(f"/api/chunks/{page2['id']}", params={"start": at, "end": at + 11})
    ).json()
    assert view["quote"]["text"] == "Chlorophyll"
    (on_page,) = view["rects"]
    assert on_page["page"] == 2 and on_page["width"] > 500 and on_page["height"] > 700
    (x0, y0, x1, y1) = on_page["rects"][0]
    assert 0 <= x0 < x1 <= on_page["width"] and 0 <= y0 < y1 <= on_page["height"]
    png = await http.get(f"/api/documents/{pdf_id}/pages/2.png", params={"scale": 1})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content[:8] == b"\x89PNG\r\n\x1a\n"
    cached = await http.get(f"/api/documents/{pdf_id}/pages/2.png", params={"scale": 1})
    assert cached.content == png.content
    assert_error(await http.get(f"/api/documents/{pdf_id}/pages/99.png"), 404, "DOC_008")
    assert_error(await http.get(f"/api/documents/{md_id}/pages/1.png"), 422, "DOC_009")
    assert (await http.get(f"/api/documents/{pdf_id}/pages/1.png?scale=nan")).status_code == 422


async def test_cancel_mid_embedding_leaves_nothing_and_retry_completes(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    nb = await create_notebook(http, "Cancel")
    # Enough distinct paragraphs for many embedding steps.
    big = "\n\n".join(
        f"Paragraph {i}: the {i}th note on topic {i % 97} mentions quasar{i} and nebula{i}."
        for i in range(3000)
    )
    async with notebook_socket(live, nb["id"]) as sock:
        accepted = await upload(http, nb["id"], ("big.txt", big.encode()))
        doc_id = accepted["documents"][0]["document_id"]
        await sock.until(
            lambda e: (
                e.get("document_id") == doc_id
                and e.get("step") == "embedding"
                and e.get("progress", 0) > 16
            )
        )
        response = await http.post(f"/api/documents/{doc_id}/cancel")
        assert response.status_code == 200, response.text
        final = await sock.until(finished(doc_id))
    assert final["status"] == "cancelled"
    job = await wait_job(http, accepted["job_id"])
    assert job["status"] == "completed" and job["counts"] == {"cancelled": 1}
    doc = (await http.get(f"/api/documents/{doc_id}")).json()
    assert (doc["status"], doc["chunk_count"], doc["chunks"]) == ("cancelled", 0, [])
    hits = (
        await http.post("/api/search", json={"query": "quasar17 nebula17", "notebook_id": nb["id"]})
    ).json()["results"]
    assert hits == []
    services = live.app.state.services
    assert await services.vectors.get_ids(where={"document_id": doc_id}) == []
    assert_error(await http.post(f"/api/documents/{doc_id}/cancel"), 409, "JOB_002")
    # The original is kept: a retry ingests it again, as a new job.
    retried = await http.post(f"/api/documents/{doc_id}/retry")
    assert retried.status_code == 202, retried.text
    job = await wait_job(http, retried.json()["id"], within=600)
    assert job["counts"] == {"completed": 1}


async def test_job_events_over_sse_end_with_the_job(http: httpx.AsyncClient) -> None:
    nb = await create_notebook(http, "SSE jobs")
    accepted = await upload(
        http, nb["id"], ("g.md", GEOLOGY.encode()), ("a.md", ASTRONOMY.encode())
    )
    events: list[tuple[str, dict[str, Any]]] = []
    async with http.stream("GET", f"/api/jobs/{accepted['job_id']}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        name = ""
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((name, json.loads(line.split(":", 1)[1])))
    assert events[0][0] == "snapshot"
    assert events[-1][0] in ("job_updated", "snapshot")
    final = events[-1][1]
    status = final["job"]["status"] if events[-1][0] == "job_updated" else final["status"]
    assert status == "completed"
    for document_id in (d["document_id"] for d in accepted["documents"]):
        seen = [e["progress"] for n, e in events if e.get("document_id") == document_id]
        assert seen == sorted(seen)


async def test_events_of_a_finished_job_end_cleanly(http: httpx.AsyncClient) -> None:
    # Found by the schemathesis run: the stream of a finished job closed its subscription
    # while anext() still ran it, raised, and broke the response (IncompleteRead).
    nb = await create_notebook(http, "SSE finished job")
    accepted = await upload(http, nb["id"], ("f.md", GEOLOGY.encode()))
    await wait_job(http, accepted["job_id"])
    for _ in range(3):
        async with http.stream("GET", f"/api/jobs/{accepted['job_id']}/events") as response:
            assert response.status_code == 200
            body = (await response.aread()).decode()
        assert body.startswith("event: snapshot"), body
        assert '"status":"completed"' in body.replace(" ", "")


async def test_notebook_delete_removes_everything_everywhere(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    nb = await create_notebook(http, "Doomed")
    unique = GEOLOGY.replace("Basalt", "Doomedite") + "\nOnly the doomed notebook has this file."
    accepted = await upload(http, nb["id"], ("doomed.md", unique.encode()))
    await wait_job(http, accepted["job_id"])
    doc_id = accepted["documents"][0]["document_id"]
    services = live.app.state.services
    doc = await services.documents.get(doc_id)
    original = services.originals.path(doc.sha256)
    conv = await http.post(
        "/api/chat/conversations", json={"title": "doomed chat", "notebook_id": nb["id"]}
    )
    assert conv.status_code == 201 and conv.json()["notebook_id"] == nb["id"]
    assert original.is_file() and await services.vectors.get_ids(where={"document_id": doc_id})

    response = await http.delete(f"/api/notebooks/{nb['id']}")
    assert response.status_code == 202, response.text
    assert_error(await http.get(f"/api/notebooks/{nb['id']}"), 404, "NB_001")  # hidden at once
    job = await wait_job(http, response.json()["job_id"])
    assert job["status"] == "completed", job
    assert_error(await http.get(f"/api/documents/{doc_id}"), 404, "DOC_004")
    assert not original.exists()
    assert await services.vectors.get_ids(where={"document_id": doc_id}) == []
    names = {n["name"] for n in (await http.get("/api/notebooks")).json()["items"]}
    assert "Doomed" not in names
    assert_error(await http.get(f"/api/chat/conversations/{conv.json()['id']}"), 404, "CHAT_005")


async def test_chat_is_scoped_to_the_conversations_notebook(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    rocks = await create_notebook(http, "Rocks only")
    stars = await create_notebook(http, "Stars only")
    for nb, name, text in ((rocks, "rocks.md", GEOLOGY), (stars, "stars.md", ASTRONOMY)):
        await wait_job(http, (await upload(http, nb["id"], (name, text.encode())))["job_id"])
    async with notebook_socket(live, rocks["id"]) as rocks_ws:
        answer = await http.post(
            "/api/chat/message",
            json={
                "message": "What is basalt, and who discovered the first pulsar?",
                "notebook_id": rocks["id"],
                "max_tokens": 8,
            },
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["conversation"]["notebook_id"] == rocks["id"]
        assert {s["filename"] for s in body["sources"]} == {"rocks.md"}
        created = await rocks_ws.until(lambda e: e["type"] == "conversation_created")
        assert created["conversation"]["id"] == body["conversation"]["id"]
    cid = body["conversation"]["id"]
    # A follow-up in the same conversation stays in its notebook, named or not.
    follow = await http.post(
        "/api/chat/message",
        json={"message": "Tell me about pulsars.", "conversation_id": cid, "max_tokens": 8},
    )
    assert {s["filename"] for s in follow.json()["sources"]} <= {"rocks.md"}
    refused = await http.post(
        "/api/chat/message",
        json={"message": "Pulsars?", "conversation_id": cid, "notebook_id": stars["id"]},
    )
    assert_error(refused, 422, "CHAT_006")
    listed = await http.get("/api/chat/conversations", params={"notebook_id": rocks["id"]})
    assert [c["id"] for c in listed.json()["items"]] == [cid]
    other = await http.get("/api/chat/conversations", params={"notebook_id": stars["id"]})
    assert other.json()["items"] == []
    # Source selection: a conversation in Stars limited to no matching document cites nothing
    # from elsewhere.
    chosen = await http.post(
        "/api/chat/message",
        json={
            "message": "Who discovered the first pulsar?",
            "notebook_id": stars["id"],
            "filters": {"document_ids": ["no-such-document"]},
            "max_tokens": 8,
        },
    )
    assert chosen.status_code == 200 and chosen.json()["sources"] == []
