"""Property tests of chunk offsets (issue 12): for any document, every chunk's text is exactly
the document's text at its offsets, chunks are in order, within chunk_size tokens, and
together cover every span that has a token. Documents are built the way loaders build them
(DocumentBuilder: blocks, pages, sections, headings) from any Unicode text, long "words"
without spaces included; the regex tokenizer and the real MiniLM tokenizer."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from studyrag.backends.embeddings.base import RegexTokenizer, Tokenizer
from studyrag.config import IngestSettings
from studyrag.ingest.chunking import ChunkDraft, chunk_document
from studyrag.ingest.loaders.base import DocumentBuilder, ExtractedDocument
from tests.ingest.test_chunking import MiniLMTokenizer, _minilm_dir

WORDS = st.one_of(
    st.sampled_from(["cell", "ATP", "Photosynthesis", "e.g.", "Dr.", "3.14", "naïve", "日本語"]),
    st.text(min_size=1, max_size=12),  # any Unicode, control and combining characters too
    st.text(alphabet="ab", min_size=40, max_size=400),  # a "word" longer than any token
)
SEPARATORS = st.sampled_from([" ", " ", "  ", "\n", ". ", "! ", "? ", "\t", ", ", "。"])


@st.composite
def block_text(draw: Any) -> str:
    words = draw(st.lists(WORDS, min_size=1, max_size=30))
    seps = draw(st.lists(SEPARATORS, min_size=len(words), max_size=len(words)))
    return "".join(w + s for w, s in zip(words, seps, strict=True))


@st.composite
def documents(draw: Any) -> ExtractedDocument:
    builder = DocumentBuilder()
    page: int | None = draw(st.sampled_from([None, 1]))
    section: tuple[str, ...] = ()
    for _ in range(draw(st.integers(1, 12))):
        if page is not None and draw(st.booleans()):
            page += draw(st.integers(0, 2))
        if draw(st.integers(0, 3)) == 0:
            heading = draw(st.text(min_size=1, max_size=20))
            depth = draw(st.integers(1, 3))
            section = (*section[: depth - 1], heading.strip() or "H")
            builder.add(heading, page=page, section=section, kind="heading")
        builder.add(draw(block_text()), page=page, section=section)
    return builder.build()


# The smallest chunk size the settings accept.
MIN_CHUNK_SIZE = int(IngestSettings.model_json_schema()["properties"]["chunk_size"]["minimum"])


@st.composite
def sizes(draw: Any, low: int = 1) -> tuple[int, int]:
    chunk_size = draw(st.integers(low, 64))
    return chunk_size, draw(st.integers(0, chunk_size - 1))


def check(
    doc: ExtractedDocument, chunks: list[ChunkDraft], tokenizer: Tokenizer, size: int
) -> None:
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert 0 <= chunk.start < chunk.end <= len(doc.text)
        assert chunk.text == doc.text[chunk.start : chunk.end]
        assert 0 < chunk.token_count <= size
    starts = [c.start for c in chunks]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    covered: set[int] = set()
    for chunk in chunks:
        covered.update(range(chunk.start, chunk.end))
    for span in doc.spans:
        for a, b in tokenizer.offsets(doc.span_text(span)):
            # Every token of every span is in some chunk: nothing a student wrote is lost.
            assert set(range(span.start + a, span.start + b)) <= covered, doc.span_text(span)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=documents(), size=sizes())
def test_chunk_offsets_hold_for_any_document_regex(
    doc: ExtractedDocument, size: tuple[int, int]
) -> None:
    tokenizer = RegexTokenizer()
    chunks = chunk_document(doc, tokenizer, chunk_size=size[0], chunk_overlap=size[1])
    check(doc, chunks, tokenizer, size[0])


@pytest.fixture(scope="module")
def minilm() -> MiniLMTokenizer:
    return MiniLMTokenizer(_minilm_dir())


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
# Sizes the settings accept: below them MiniLM's several tokens for one character (a Hangul
# syllable is split into its jamo, all at the same offsets) can fill whole chunks, and two
# chunks then start at the same character.
@given(doc=documents(), size=sizes(low=MIN_CHUNK_SIZE))
def test_chunk_offsets_hold_for_any_document_minilm(
    minilm: MiniLMTokenizer, doc: ExtractedDocument, size: tuple[int, int]
) -> None:
    chunks = chunk_document(doc, minilm, chunk_size=size[0], chunk_overlap=size[1])
    check(doc, chunks, minilm, size[0])
