"""Property tests of citation marker resolution (issue 12), for any answer text: what is left
cites only known sources, what is cited is exactly what the markers name, known markers and
everything that is not a marker (code, indexes, prose) are kept, and resolving twice changes
nothing more."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from studyrag.chat.citations import find_markers, resolve_citations, strip_markers

# Pieces small models write around citations: markers of every form, indexes, code, prose.
PIECES = st.one_of(
    st.sampled_from(
        [
            "[1]",
            "[2]",
            "[9]",
            "[1, 2]",
            "[1][2]",
            "[2-4]",
            "[1 and 9]",
            "[Source 2]",
            "[sources: 1, 3]",
            "[1990-2020]",
            " ",
            "  ",
            "\n",
            ".",
            ",",
            "Plants",
            "make ATP",
            "args",
            "x",
            ")",
            "]",
            "[",
            "`",
            "``",
            "```\n",
            "\n```\n",
            "~~~\n",
            "_",
        ]
    ),
    st.integers(0, 30).map(lambda n: f"[{n}]"),
    st.text(max_size=6),
)


@st.composite
def answers(draw: Any) -> str:
    return "".join(draw(st.lists(PIECES, max_size=40)))


def sources(indexes: set[int]) -> list[dict[str, Any]]:
    return [{"index": i} for i in sorted(indexes)]


KNOWN = st.sets(st.integers(1, 8), max_size=8)


@settings(max_examples=1000, deadline=None)
@given(answer=answers(), known=KNOWN)
def test_resolution_keeps_only_known_citations(answer: str, known: set[int]) -> None:
    clean, cited, removed = resolve_citations(answer, sources(known))
    left = [n for m in find_markers(clean) for n in m.numbers]
    # Nothing left in the answer names an unknown source; what is cited is what is left.
    assert all(n in known for n in left), clean
    assert cited == sorted(set(left))
    assert all(int(r[1:-1]) not in known for r in removed)
    if not any(c in answer for c in "`~"):
        # Without code, removing a marker changes nothing else: exactly the named ones go.
        named = [n for m in find_markers(answer) for n in m.numbers]
        assert cited == sorted({n for n in named if n in known})
        assert sorted(removed) == sorted(f"[{n}]" for n in named if n not in known)


@settings(max_examples=1000, deadline=None)
@given(answer=answers(), known=KNOWN)
def test_resolution_touches_nothing_but_markers(answer: str, known: set[int]) -> None:
    clean, _, _ = resolve_citations(answer, sources(known))
    if not any(c in answer for c in "`~"):
        # Without code, the text outside markers is the same whatever was removed.
        assert strip_markers(clean) == strip_markers(answer), clean
    # With every named source known, the text outside markers is the same, code or not.
    named = {n for m in find_markers(answer) for n in m.numbers}
    kept_all, _, _ = resolve_citations(answer, sources(known | named))
    assert strip_markers(kept_all) == strip_markers(answer)


@settings(max_examples=1000, deadline=None)
@given(answer=answers(), known=KNOWN)
def test_resolving_twice_changes_nothing(answer: str, known: set[int]) -> None:
    clean, cited, _ = resolve_citations(answer, sources(known))
    again, cited_again, removed_again = resolve_citations(clean, sources(known))
    assert again == clean
    assert removed_again == []
    assert cited_again == cited


@settings(max_examples=500, deadline=None)
@given(answer=answers())
def test_an_answer_citing_only_known_sources_is_kept(answer: str) -> None:
    named = {n for m in find_markers(answer) for n in m.numbers}
    clean, cited, removed = resolve_citations(answer, sources(named))
    assert clean == answer.strip()
    assert cited == sorted(named) and removed == []
