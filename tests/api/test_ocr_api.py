"""Scanned PDFs and images through the public API of a real server: upload, per-page OCR
progress on the notebook WebSocket, search by the recognised words, highlights on the scan,
the image's page render, and a page that cannot be read reported while the rest is kept."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.api.conftest import LiveServer
from tests.api.test_notebooks import create_notebook, finished, notebook_socket, upload
from tests.ingest.scans import corrupt_image_of_page, render_page, save_png, save_scanned_pdf

pytestmark = pytest.mark.slow

LECTURE_ONE = [
    ["Stomata are tiny pores on the underside", "of a leaf that let carbon dioxide in."],
    ["Guard cells open and close each stoma."],
]
LECTURE_TWO = [["Xylem vessels carry water up from the roots", "to the leaves of the plant."]]
LECTURE_THREE = [["Phloem carries sugars from the leaves", "to the growing tips."]]
WHITEBOARD = [["Osmosis moves water across a membrane", "towards the higher solute level."]]


def inside(rect: list[float], page: dict[str, float]) -> bool:
    x0, y0, x1, y1 = rect
    return 0 <= x0 < x1 <= page["width"] and 0 <= y0 < y1 <= page["height"]


async def search(http: httpx.AsyncClient, notebook_id: str, query: str) -> dict[str, object]:
    response = await http.post(
        "/api/search",
        json={"query": query, "mode": "lexical", "top_k": 3, "notebook_id": notebook_id},
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert results, f"nothing found for {query!r}"
    return dict(results[0])


async def test_scans_and_images_are_searchable_with_pages_and_highlights(
    live: LiveServer, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    nb = await create_notebook(http, "Plant anatomy scans")
    scan = save_scanned_pdf(
        tmp_path / "lecture.pdf", [render_page(LECTURE_ONE), render_page(LECTURE_TWO)]
    )
    board = render_page(WHITEBOARD)
    photo = save_png(tmp_path / "whiteboard.png", board)
    async with notebook_socket(live, nb["id"]) as sock:
        accepted = await upload(
            http,
            nb["id"],
            ("lecture.pdf", scan.read_bytes()),
            ("whiteboard.png", photo.read_bytes()),
        )
        ids = {d["filename"]: d["document_id"] for d in accepted["documents"]}
        for document_id in ids.values():
            final = await sock.until(finished(document_id), within=300)
            assert final["status"] == "completed", final
    # Per-page progress while the scan was recognised.
    pages = [
        e["pages"]
        for e in sock.events
        if e.get("document_id") == ids["lecture.pdf"] and e.get("pages")
    ]
    assert pages == [{"done": 1, "total": 2}, {"done": 2, "total": 2}]

    doc = (await http.get(f"/api/documents/{ids['lecture.pdf']}")).json()
    assert doc["metadata"]["ocr_pages"] == [1, 2]
    assert "page_boxes" not in doc["metadata"]  # internal, like page_starts

    hit = await search(http, nb["id"], "xylem vessels water")
    assert (hit["filename"], hit["page"]) == ("lecture.pdf", 2)
    hit = await search(http, nb["id"], "guard cells stoma")
    assert (hit["filename"], hit["page"]) == ("lecture.pdf", 1)
    chunk = (await http.get(f"/api/chunks/{hit['chunk_id']}")).json()
    at = chunk["start"] + chunk["text"].index("Guard")
    view = (
        await http.get(f"/api/chunks/{hit['chunk_id']}", params={"start": at, "end": at + 11})
    ).json()
    assert view["quote"]["text"] == "Guard cells"
    (on_page,) = view["rects"]
    assert on_page["page"] == 1 and on_page["rects"]
    assert all(inside(r, on_page) for r in on_page["rects"])

    hit = await search(http, nb["id"], "osmosis membrane")
    assert (hit["filename"], hit["page"], hit["file_type"]) == ("whiteboard.png", 1, "image")
    chunk = (await http.get(f"/api/chunks/{hit['chunk_id']}")).json()
    at = chunk["start"] + chunk["text"].index("Osmosis")
    view = (
        await http.get(f"/api/chunks/{hit['chunk_id']}", params={"start": at, "end": at + 7})
    ).json()
    (on_page,) = view["rects"]
    (rect,) = on_page["rects"]
    truth = board.box("Osmosis")
    assert inside(rect, on_page)
    assert (
        rect[0] < (truth[0] + truth[2]) / 2 < rect[2] and rect[1] < truth[3] and truth[1] < rect[3]
    )
    png = await http.get(f"/api/documents/{ids['whiteboard.png']}/pages/1.png", params={"scale": 1})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert int.from_bytes(png.content[16:20], "big") == round(on_page["width"])
    missing = await http.get(f"/api/documents/{ids['whiteboard.png']}/pages/2.png")
    assert missing.status_code == 404 and missing.json()["error_code"] == "DOC_008"
    original = await http.get(f"/api/documents/{ids['whiteboard.png']}/file")
    assert original.headers["content-type"] == "image/png"


async def test_a_page_ocr_cannot_read_is_reported_and_the_rest_ingested(
    live: LiveServer, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    nb = await create_notebook(http, "Damaged scan")
    scan = save_scanned_pdf(
        tmp_path / "damaged.pdf",
        [render_page(LECTURE_ONE), render_page(LECTURE_TWO), render_page(LECTURE_THREE)],
    )
    corrupt_image_of_page(scan, 1)
    async with notebook_socket(live, nb["id"]) as sock:
        accepted = await upload(http, nb["id"], ("damaged.pdf", scan.read_bytes()))
        document_id = accepted["documents"][0]["document_id"]
        final = await sock.until(finished(document_id), within=300)
    assert final["status"] == "completed", final
    warned = [e["warning"] for e in sock.events if e.get("warning")]
    assert [w["page"] for w in warned] == [2]
    doc = (await http.get(f"/api/documents/{document_id}")).json()
    assert doc["metadata"]["warnings"] == warned
    assert {c["page"] for c in doc["chunks"]} == {1, 3}
    hit = await search(http, nb["id"], "phloem sugars")
    assert hit["page"] == 3
