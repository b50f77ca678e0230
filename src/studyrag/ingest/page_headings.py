"""Page headings: what a page of a PDF is about, carried into each chunk's indexed context.

A financial statement, a slide or a table usually names itself once, at the top of its page
("3M Company and Subsidiaries Consolidated Statement of Cash Flows Years ended December 31");
the chunks further down the page are bare rows of figures that neither BM25 nor an embedding
can tie to a question naming the statement. Each chunk of a page that does not itself hold
the page's opening therefore gets that opening in its context (indexed and embedded with the
chunk, never part of its text, so chunk offsets still index ``documents.content`` exactly).

The opening is the page's first paragraph that is not page furniture, cut to a few words:

- Furniture is a paragraph repeated on many pages (a running header such as "Table of
  Contents", a company name in the header, a page number): it says nothing about one page.
- A page that opens in the middle of a sentence (its first paragraph starts with a lower-case
  letter or punctuation) continues the previous page: it has no heading of its own.
- Only the first ``MAX_WORDS`` words count: a heading is short, and pdfium often joins a
  statement's title with the first rows of its table into one paragraph.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass

from studyrag.ingest.loaders.base import DocumentBuilder, ExtractedDocument, Span

#: app_state key set by migration 0004 while chunks stored before page headings remain.
CONTEXTS_OUTDATED = "contexts_outdated"
# A heading is a line or two; a title merged with the first table rows is cut here.
MAX_WORDS = 16
# A paragraph on at least this many pages, and on at least 1 / _FURNITURE_SHARE of them,
# repeats like a running header or footer rather than naming one page.
_FURNITURE_MIN_PAGES = 3
_FURNITURE_SHARE = 10
_DIGITS = re.compile(r"\d+")
_LETTER = re.compile(r"[^\W\d_]")
_WORDS = re.compile(r"\S+")


@dataclass(frozen=True, slots=True)
class PageHeading:
    """A page's opening words, and where the paragraph they come from sits in the text."""

    text: str
    start: int
    end: int


def _key(paragraph: str) -> str:
    """A paragraph with its numbers dropped: "Page 12" and "Page 13" repeat the same way."""
    return " ".join(_DIGITS.sub(" ", paragraph).casefold().split())


def page_headings(doc: ExtractedDocument) -> dict[int, PageHeading]:
    """Each page's heading (see the module docstring); pages without one are left out."""
    firsts: dict[int, list[tuple[int, int]]] = {}
    pages_of: dict[str, set[int]] = {}
    for span in doc.spans:
        if span.page is None:
            continue
        firsts.setdefault(span.page, [])
        if len(firsts[span.page]) < 4:
            # Only a page's first paragraphs can head it; past furniture, the first counts.
            firsts[span.page].append((span.start, span.end))
        pages_of.setdefault(_key(doc.text[span.start : span.end]), set()).add(span.page)
    if not firsts:
        return {}
    repeats = max(_FURNITURE_MIN_PAGES, -(-len(firsts) // _FURNITURE_SHARE))
    furniture = {key for key, pages in pages_of.items() if len(pages) >= repeats}
    headings: dict[int, PageHeading] = {}
    for page, spans in firsts.items():
        for start, end in spans:
            paragraph = doc.text[start:end]
            if not _LETTER.search(paragraph) or _key(paragraph) in furniture:
                continue
            if not (paragraph[0].isupper() or paragraph[0].isdigit()):
                break  # the page continues the previous one's sentence
            words = _WORDS.findall(paragraph)[:MAX_WORDS]
            headings[page] = PageHeading(" ".join(words), start, end)
            break
    return headings


def chunk_contexts(
    document_context: str,
    headings: dict[int, PageHeading],
    chunks: list[tuple[int, int | None]],
) -> list[str]:
    """The context of each (start, page) chunk: the document's, then its page's heading.

    A chunk that starts at or before its page's heading holds the heading itself: repeating
    it would count its words twice.
    """
    out: list[str] = []
    for start, page in chunks:
        heading = headings.get(page) if page is not None else None
        if heading is None or start <= heading.start:
            out.append(document_context)
        else:
            out.append(" — ".join(part for part in (document_context, heading.text) if part))
    return out


def page_headings_from_text(content: str, page_starts: list[int] | None) -> dict[int, PageHeading]:
    """The page headings of a paged text (a PDF's), from the text and `metadata.page_starts`.

    The PDF loader writes each page's paragraphs separated by a blank line and records where
    each page starts, so its paragraphs can be found again without the original. Ingestion
    and reindex both call this, so a reindex gives chunks stored before page headings
    existed exactly the contexts a new ingest gives them. Without page starts: no headings.
    """
    if not content or not page_starts:
        return {}
    spans: list[Span] = []
    separator = DocumentBuilder.SEPARATOR
    position = 0
    while position < len(content):
        end = content.find(separator, position)
        end = len(content) if end < 0 else end
        if end > position:
            # The last page starting at or before the paragraph is the one it is on.
            page = bisect_right(page_starts, position)
            spans.append(Span(position, end, max(page, 1), ()))
        position = end + len(separator)
    return page_headings(ExtractedDocument(content, spans))
