"""Page headings: which words head a page, and which chunks carry them in their context."""

from __future__ import annotations

from studyrag.ingest.loaders.base import DocumentBuilder, ExtractedDocument
from studyrag.ingest.page_headings import (
    MAX_WORDS,
    chunk_contexts,
    page_headings,
    page_headings_from_text,
)


def paged(pages: list[list[str]]) -> ExtractedDocument:
    """A document as the PDF loader builds one: paragraphs per page, page starts recorded."""
    builder = DocumentBuilder()
    starts = []
    for number, paragraphs in enumerate(pages, start=1):
        starts.append(builder.next_start)
        for paragraph in paragraphs:
            builder.add(paragraph, page=number)
    return builder.build({"page_starts": starts})


ROWS = "Net income 5,791 5,929 Depreciation 1,831 1,915 Purchases of property (1,749) (1,603)"


def statements() -> ExtractedDocument:
    # "Table of Contents" and the page number repeat on every page: furniture.
    topics = ["revenue", "leases", "taxes", "debt", "pensions", "segments", "risks", "equity"]
    pages = [
        ["Table of Contents", f"Page {n}", f"Plain prose about {topic}. It goes on."]
        for n, topic in enumerate(topics, start=1)
    ]
    pages[2] = ["Table of Contents", "ACME Corp Consolidated Statement of Cash Flows", ROWS]
    pages[3] = ["Table of Contents", "continued from the previous page, the discussion", ROWS]
    pages[4] = ["Table of Contents", "123", "(Millions) " + ROWS]
    return paged(pages)


def test_furniture_is_skipped_and_the_first_real_paragraph_heads_the_page() -> None:
    headings = page_headings(statements())
    assert headings[3].text == "ACME Corp Consolidated Statement of Cash Flows"
    assert headings[1].text == "Plain prose about revenue. It goes on."
    assert headings[8].text == "Plain prose about equity. It goes on."
    # Numbers alone head nothing; the paragraph after them opens with "(": no heading.
    assert 5 not in headings


def test_a_page_that_continues_a_sentence_has_no_heading() -> None:
    assert 4 not in page_headings(statements())


def test_a_heading_merged_with_table_rows_is_cut_to_a_few_words() -> None:
    doc = paged([["BALANCE SHEETS (Amounts in millions) " + ROWS * 3]])
    heading = page_headings(doc)[1]
    assert len(heading.text.split()) == MAX_WORDS
    assert heading.text.startswith("BALANCE SHEETS (Amounts in millions) Net income")


def test_unpaged_documents_have_no_headings() -> None:
    builder = DocumentBuilder()
    builder.add("Title", kind="heading")
    builder.add("Body text.")
    assert page_headings(builder.build()) == {}
    assert page_headings_from_text("Title\n\nBody text.", None) == {}


def test_the_text_and_page_starts_alone_give_the_same_headings() -> None:
    doc = statements()
    assert page_headings_from_text(doc.text, doc.metadata["page_starts"]) == page_headings(doc)


def test_empty_pages_do_not_shift_the_headings() -> None:
    doc = paged([["First page heading", "Body one."], [], ["Third page heading", "Body."]])
    found = page_headings_from_text(doc.text, doc.metadata["page_starts"])
    assert {p: h.text for p, h in found.items()} == {
        1: "First page heading",
        3: "Third page heading",
    }


def test_only_chunks_below_the_heading_carry_it() -> None:
    doc = statements()
    heading = page_headings(doc)[3]
    rows_start = doc.text.index(ROWS, heading.end)
    contexts = chunk_contexts(
        "ACME 2022 10K",
        page_headings(doc),
        [(heading.start, 3), (rows_start, 3), (0, 1), (rows_start, None)],
    )
    assert contexts == [
        "ACME 2022 10K",  # the chunk holds the heading itself
        "ACME 2022 10K — ACME Corp Consolidated Statement of Cash Flows",
        "ACME 2022 10K",  # starts at the page's first paragraph
        "ACME 2022 10K",  # no page
    ]
    assert chunk_contexts("", page_headings(doc), [(rows_start, 3)]) == [heading.text]
