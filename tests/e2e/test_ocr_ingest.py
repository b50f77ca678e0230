"""The OCR settings through the real pipeline (real MiniLM, SQLite, Chroma): with OCR a
scanned PDF is searchable by its words on the right page; with OCR off it fails with the
"no text" error that says how to turn OCR on, and a text PDF is unaffected."""

from __future__ import annotations

from pathlib import Path

import pytest

from studyrag.config import IngestSettings, Settings
from studyrag.services import open_services
from tests.e2e.test_ingest_search import make_pdf
from tests.ingest.scans import render_page, save_scanned_pdf

pytestmark = pytest.mark.slow

PAGES = [
    [["The treaty of Westphalia was signed in 1648."]],
    [["Magellan's fleet first sailed around the world", "between 1519 and 1522."]],
]


async def test_ocr_setting_decides_whether_scans_are_read(tmp_path: Path, minilm: object) -> None:
    scan = save_scanned_pdf(tmp_path / "history.pdf", [render_page(p) for p in PAGES])
    text_pdf = make_pdf(tmp_path / "biology.pdf")

    settings = Settings(data_dir=tmp_path / "on", ingest=IngestSettings(ocr_threads=1))
    async with open_services(settings, embedder=minilm) as services:  # type: ignore[arg-type]
        seen: list[tuple[str, float, tuple[int, int] | None]] = []
        result = await services.pipeline.ingest_file(
            scan, progress=lambda p: seen.append((p.step, p.percent, p.pages))
        )
        assert result.status == "completed", result
        assert [pages for _, _, pages in seen if pages] == [(1, 2), (2, 2)]
        percents = [percent for _, percent, _ in seen]
        assert percents == sorted(percents)  # OCR pages move the bar forward, never back
        top = (await services.search.search("Magellan fleet", mode="lexical")).results[0]
        assert (top.filename, top.page) == ("history.pdf", 2)

    settings = Settings(data_dir=tmp_path / "off", ingest=IngestSettings(ocr=False))
    async with open_services(settings, embedder=minilm) as services:  # type: ignore[arg-type]
        refused = await services.pipeline.ingest_file(scan)
        assert (refused.status, refused.error_code) == ("failed", "DOC_003")
        assert "OCR is off" in (refused.error or "")
        assert "STUDYRAG_INGEST__OCR=true" in (refused.error or "")
        doc = await services.pipeline.repo.get(refused.document_id or "")
        assert doc.status == "failed" and doc.error_code == "DOC_003"
        assert (await services.pipeline.ingest_file(text_pdf)).status == "completed"
