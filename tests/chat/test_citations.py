"""Citation markers: resolved, normalised, or removed when they match no source."""

from __future__ import annotations

import logging

import pytest

from studyrag.chat.citations import find_markers, mark_cited, resolve_citations, strip_markers
from studyrag.retrieval.context import Source


def _source(index: int) -> Source:
    return Source(
        index=index,
        document_id=f"d{index}",
        filename=f"notes{index}.md",
        page=None,
        section="",
        chunk_id=index,
        score=1.0 / index,
        text=f"passage {index}",
        start=0,
        end=9,
    )


SOURCES = [_source(1), _source(2), _source(3)]


@pytest.mark.parametrize(
    ("answer", "clean", "cited"),
    [
        ("Plants make sugar [1].", "Plants make sugar [1].", [1]),
        ("Both agree [1, 2].", "Both agree [1, 2].", [1, 2]),
        ("Both agree [1][3].", "Both agree [1][3].", [1, 3]),
        ("All of them [1-3].", "All of them [1-3].", [1, 2, 3]),
        ("See [Source 2] and [sources: 1, 3].", "See [Source 2] and [sources: 1, 3].", [1, 2, 3]),
        ("No markers at all.", "No markers at all.", []),
    ],
)
def test_valid_markers_are_kept(answer: str, clean: str, cited: list[int]) -> None:
    out, got, removed = resolve_citations(answer, SOURCES)
    assert (out, got, removed) == (clean, cited, [])


def test_out_of_range_markers_are_removed_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="studyrag.chat.citations"):
        out, cited, removed = resolve_citations("Light matters [7]. Water too [2] [0].", SOURCES)
    assert out == "Light matters. Water too [2]."
    assert cited == [2]
    assert removed == ["[7]", "[0]"]
    assert "[7]" in caplog.text


def test_group_keeps_only_known_numbers() -> None:
    out, cited, removed = resolve_citations("Mixed [1, 9] and [4-5] here.", SOURCES)
    assert out == "Mixed [1] and here."
    assert cited == [1]
    assert removed == ["[9]", "[4]", "[5]"]


def test_marker_at_start_and_every_marker_invalid() -> None:
    out, cited, removed = resolve_citations("[5] Nothing matches [6].", SOURCES)
    assert out == "Nothing matches."
    assert cited == [] and removed == ["[5]", "[6]"]


def test_no_sources_removes_every_marker() -> None:
    out, cited, removed = resolve_citations("Claim [1].", [])
    assert (out, cited, removed) == ("Claim.", [], ["[1]"])


def test_source_dicts_and_mark_cited() -> None:
    dicts = [s.to_dict() for s in SOURCES]
    _, cited, _ = resolve_citations("Only the second [2].", dicts)
    marked = mark_cited(dicts, cited)
    assert [m["cited"] for m in marked] == [False, True, False]
    from_objects = mark_cited(SOURCES, cited)
    assert from_objects == marked
    assert "cited" not in dicts[0]  # inputs are not modified


def test_strip_markers() -> None:
    assert strip_markers("Sugar [1], water [2, 3] and light [Source 1].") == (
        "Sugar, water and light."
    )


@pytest.mark.parametrize(
    "answer",
    [
        "args[0] = &ffi_type_pointer;",
        "Write `args[0] = &ffi_type_pointer;` first.",
        "```c\nargs[0] = &ffi_type_pointer;\nvalues[9] = NULL; /* [7] */\n```",
        "~~~\nx[1] = [ 2 ]\n~~~",
        "Index with x[1], m[2][3] or f(a)[4].",
        "Unclosed block:\n```python\nrows[5] = [6]",
    ],
)
def test_code_and_indexes_are_never_touched(answer: str) -> None:
    assert resolve_citations(answer, SOURCES) == (answer, [], [])
    assert strip_markers(answer) == answer


def test_markers_next_to_code_are_still_resolved() -> None:
    answer = "Call `f(args[0])` here [9].\n```\nargs[0] = &ffi_type_pointer;\n```\nDone [2][3]."
    out, cited, removed = resolve_citations(answer, SOURCES)
    assert out == "Call `f(args[0])` here.\n```\nargs[0] = &ffi_type_pointer;\n```\nDone [2][3]."
    assert (cited, removed) == ([2, 3], ["[9]"])
    markers = find_markers(out)
    assert [m.numbers for m in markers] == [(2,), (3,)]


# Found by tests/chat/test_citation_properties.py (Hypothesis).
def test_an_unknown_marker_before_a_known_one_keeps_it_a_citation() -> None:
    # Removing "[9]" with its space used to leave "Plants[2]": an index, not a citation.
    out, cited, removed = resolve_citations("Plants [9][2] and more [8][9][3].", SOURCES)
    assert out == "Plants [2] and more [3]."
    assert (cited, removed) == ([2, 3], ["[9]", "[8]", "[9]"])


def test_a_removal_that_changes_what_is_code_is_resolved_again() -> None:
    # Without "[9]" the first line is a fence that closes the block the last "[9]" was in.
    out, cited, removed = resolve_citations("[9]```\n```\n[9]", SOURCES)
    assert out == "```\n```"
    assert (cited, removed) == ([], ["[9]", "[9]"])
    # And a known marker the removal puts inside code is not counted as cited.
    out, cited, _ = resolve_citations("[9]```\n[2]", SOURCES)
    assert (out, cited) == ("```\n[2]", [])
