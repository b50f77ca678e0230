"""The context header every chunk of a document is indexed and embedded with."""

from __future__ import annotations

from studyrag.ingest.chunking import ChunkDraft
from studyrag.ingest.pipeline import document_context, embedding_text


def draft(section: tuple[str, ...] = ()) -> ChunkDraft:
    return ChunkDraft(text="x", start=0, end=1, page=1, section=section, token_count=1, index=0)


def test_filename_with_words_and_a_wordy_title() -> None:
    ctx = document_context("3M_2022_10K.pdf", "10-K - 02/08/2023 - 3M Company", [draft()])
    assert ctx == "3M 2022 10K — 10-K - 02/08/2023 - 3M Company"


def test_ids_and_opaque_titles_are_left_out() -> None:
    assert document_context("4983.md", "Some Title Here", [draft(("Some Title Here",))]) == ""
    assert document_context("0000004962-23-000006.pdf", "0000004962-23-000006", [draft()]) == ""
    assert document_context("AMEX_2022.pdf", "0000004962-23-000006", [draft()]) == "AMEX 2022"


def test_title_equal_to_the_name_is_not_repeated() -> None:
    assert document_context("lecture-notes.md", "Lecture Notes", [draft()]) == "lecture notes"
    # A document without a title is stored with its file name as one.
    assert document_context("AMEX_2022_10K.pdf", "AMEX_2022_10K", [draft()]) == "AMEX 2022 10K"


def test_embedding_text_joins_what_is_there() -> None:
    assert embedding_text("", "body") == "body"
    assert embedding_text("A > B", "body", "Doc") == "Doc\nA > B\nbody"
