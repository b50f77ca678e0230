"""A statement page's heading reaches every chunk below it, in search and after a reindex.

Real pipeline, real MiniLM, a generated PDF: a running header on every page, a statement
whose title heads page 2 and whose rows fill several chunks.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from studyrag.config import Settings
from studyrag.services import Services, open_services

pytestmark = pytest.mark.slow

TITLE = "Northwind Traders Consolidated Statements of Cash Flows"
PROSE = [
    "Northwind Traders sells tea, coffee and spices to grocers in twelve countries.",
    "Its warehouses in Rotterdam and Singapore ship to customers within two days.",
    "The board met eight times during the year and approved a new dividend policy.",
]


def make_statement_pdf(path: Path) -> Path:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=11)
    rows = "\n".join(
        f"Line item number {i} for the quarter {1000 + 7 * i:,} {900 + 5 * i:,}"
        for i in range(1, 41)
    )
    # Several lines per prose paragraph, so the page's usual line pitch is a line's.
    prose = [" ".join([sentence] * 4) for sentence in PROSE]
    for paragraphs in (prose, [TITLE, rows], prose[::-1]):
        pdf.add_page()
        pdf.cell(0, 8, "Table of Contents", new_x="LMARGIN", new_y="NEXT")
        pdf.ln(6)
        for paragraph in paragraphs:
            # One multi_cell per paragraph: its lines keep the usual pitch, gaps split them.
            pdf.multi_cell(0, 5, paragraph)
            pdf.ln(6)
    pdf.output(str(path))
    return path


async def test_statement_rows_carry_their_page_heading(tmp_path: Path) -> None:
    pdf = make_statement_pdf(tmp_path / "northwind_2023_10K.pdf")
    async with open_services(Settings(data_dir=tmp_path / "data")) as services:
        result = await services.pipeline.ingest_file(pdf)
        assert result.status == "completed", result.error
        doc_id = result.document_id or ""
        content = await services.documents.get_content(doc_id)
        chunks = await services.documents.chunks_for(doc_id)
        # Offsets still index the stored text exactly: the heading is context, not text.
        assert all(c.text == content[c.start_char : c.end_char] for c in chunks)
        statement = [c for c in chunks if c.page == 2]
        assert len(statement) >= 2
        first, *below = statement
        assert TITLE in first.text and TITLE not in first.context
        assert all(c.context.endswith(TITLE) and TITLE not in c.text for c in below)
        assert all("Table of Contents" not in c.context for c in chunks)
        assert all(c.context == "northwind 2023 10K" for c in chunks if c.page != 2)
        await _lexical_finds_rows_by_the_title(services, {c.id for c in below})

        # A library indexed before page headings: contexts without them, FTS rows to match.
        await _forget_headings(services, doc_id)
        assert not await _matches(services, '"northwind" AND "flows"', {c.id for c in below})
        again = await services.pipeline.reindex(doc_id)
        assert again.status == "completed"
        after = await services.documents.chunks_for(doc_id)
        assert [c.context for c in after] == [c.context for c in chunks]
        await _lexical_finds_rows_by_the_title(services, {c.id for c in below})


async def _lexical_finds_rows_by_the_title(services: Services, below: set[int]) -> None:
    hits = await services.search.search("cash flows statement", mode="lexical", top_k=50)
    assert below <= {r.chunk_id for r in hits.results}


async def _matches(services: Services, match: str, ids: set[int]) -> bool:
    async with services.db.session() as s:
        rows = await s.execute(
            text("SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH :m"), {"m": match}
        )
        return bool(ids & {int(r[0]) for r in rows})


async def _forget_headings(services: Services, document_id: str) -> None:
    chunks = await services.documents.chunks_for(document_id)
    await services.documents.update_chunk_contexts({c.id: "northwind 2023 10K" for c in chunks})
