"""Citation markers in answers: [1], [1, 2], [1][2], [1-3], [Source 2] resolved to sources.

Only citations are touched: text inside inline code spans and fenced code blocks is never
read for markers, and a bracketed number glued to what it indexes (`args[0]`, `x[1]`,
`f(a)[2]`, `m[1][2]`) is an index, not a citation.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from studyrag.retrieval.context import Source

log = logging.getLogger(__name__)

# Small models also write "[Source 2]" or "[sources: 1, 3]"; all mean the same thing.
_MARKER = re.compile(
    r"(?P<lead>[ \t]*)\[\s*(?:sources?\s*:?\s*)?"
    r"(?P<body>\d{1,4}(?:\s*(?:,|;|-|–|and)\s*\d{1,4})*)\s*\]",
    re.IGNORECASE,
)
# A range wider than this is a year span or a typo, not a citation range.
_MAX_RANGE = 20
# A fence opens a code block at the start of a line (up to 3 spaces in, as in CommonMark)
# and is closed by a line starting with the same fence, at least as long; an unclosed one
# runs to the end (an answer cut off inside its code block).
_FENCE = re.compile(r"^[ ]{0,3}(?P<fence>`{3,}|~{3,})", re.MULTILINE)
_BACKTICKS = re.compile(r"`+")


@dataclass(frozen=True, slots=True)
class Marker:
    """One citation marker: `start`..`end` includes the blanks before the bracket."""

    start: int
    bracket: int
    end: int
    numbers: tuple[int, ...]


def _numbers(body: str) -> list[int]:
    out: list[int] = []
    for part in re.split(r"\s*(?:,|;|and)\s*", body):
        bounds = [int(x) for x in re.split(r"\s*[-–]\s*", part) if x]
        if len(bounds) == 2 and 0 <= bounds[1] - bounds[0] <= _MAX_RANGE:
            out.extend(range(bounds[0], bounds[1] + 1))
        else:
            out.extend(bounds)
    return out


def code_regions(text: str) -> list[tuple[int, int]]:
    """(start, end) of every fenced code block and inline code span, in order."""
    return [(a, b) for a, b, _ in code_spans(text)]


def code_spans(text: str) -> list[tuple[int, int, bool]]:
    """(start, end, fenced) of every code block (fenced True) and inline span, in order."""
    regions: list[tuple[int, int, bool]] = []
    pos = 0
    while True:
        opening = _FENCE.search(text, pos)
        stop = opening.start() if opening else len(text)
        regions.extend((a, b, False) for a, b in _inline_code(text, pos, stop))
        if opening is None:
            return regions
        fence = opening.group("fence")
        closing = re.compile(rf"^[ ]{{0,3}}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$", re.M)
        line_end = text.find("\n", opening.end())
        found = closing.search(text, line_end + 1) if line_end != -1 else None
        end = len(text) if found is None else found.end()
        regions.append((opening.start(), end, True))
        pos = end


def _inline_code(text: str, start: int, stop: int) -> list[tuple[int, int]]:
    """Inline code spans in text[start:stop]: a backtick run closed by a run as long."""
    spans: list[tuple[int, int]] = []
    pos = start
    while True:
        opening = _BACKTICKS.search(text, pos, stop)
        if opening is None:
            return spans
        run = opening.group(0)
        closing = re.compile(rf"(?<!`){run}(?!`)")
        found = closing.search(text, opening.end(), stop)
        if found is None:
            pos = opening.end()  # a lone backtick is literal text
            continue
        spans.append((opening.start(), found.end()))
        pos = found.end()


def find_markers(text: str) -> list[Marker]:
    """Every citation marker of `text`, outside code, that is not an index."""
    regions = code_regions(text)
    markers: list[Marker] = []
    for match in _MARKER.finditer(text):
        bracket = match.start() + len(match.group("lead"))
        if any(a <= bracket < b for a, b in regions):
            continue
        before = text[bracket - 1] if bracket > 0 else ""
        glued = bracket == match.start() and before != "" and (before.isalnum() or before in "_)]")
        # "[1][2]" is two citations; "x[1][2]" two indexes: a bracket after a bracket is
        # what the one before it was.
        after_citation = before == "]" and bool(markers) and markers[-1].end == bracket
        if glued and not after_citation:
            continue
        numbers = tuple(dict.fromkeys(_numbers(match.group("body"))))
        markers.append(Marker(match.start(), bracket, match.end(), numbers))
    return markers


def rewrite_markers(text: str, replace: Callable[[Marker], str | None]) -> str:
    """`text` with each marker replaced by `replace(marker)` (None keeps it as it is)."""
    out: list[str] = []
    pos = 0
    for marker in find_markers(text):
        new = replace(marker)
        if new is None:
            continue
        out.append(text[pos : marker.start])
        out.append(new)
        pos = marker.end
    out.append(text[pos:])
    return "".join(out)


def _index_of(source: Source | Mapping[str, Any]) -> int:
    return int(source.index if isinstance(source, Source) else source["index"])


def resolve_citations(
    answer: str, sources: Sequence[Source | Mapping[str, Any]]
) -> tuple[str, list[int], list[str]]:
    """(answer without unknown markers, cited source indexes sorted, removed markers)."""
    known = {_index_of(s) for s in sources}
    removed: list[str] = []

    def without_unknown(text: str) -> str:
        following = {m.start: m for m in find_markers(text)}

        def kept_after(marker: Marker) -> bool:
            """Whether a marker glued after this one ("[9][2]") stays."""
            after = following.get(marker.end)
            while after is not None and not any(n in known for n in after.numbers):
                after = following.get(after.end)
            return after is not None

        def replace(marker: Marker) -> str | None:
            valid = [n for n in marker.numbers if n in known]
            bad = [n for n in marker.numbers if n not in known]
            removed.extend(f"[{n}]" for n in bad)
            if not bad:
                return None
            lead = text[marker.start : marker.bracket]
            if not valid:
                # The leading space goes too, so "word [9]." becomes "word."; but not before
                # a kept marker: "word [9][2]" is "word [2]", not the index "word[2]".
                return lead if kept_after(marker) else ""
            return f"{lead}[{', '.join(str(n) for n in valid)}]"

        return rewrite_markers(text, replace).strip()

    # A removal can change what is code: "[9]```" becomes "```", a fence that opens (or
    # closes) a block around a later marker. Resolve again until nothing changes (each pass
    # that changes the text removes a marker, so this ends): no marker left names an unknown
    # source, and what is cited is what the final text cites (found by a property test).
    clean, before = without_unknown(answer), answer
    while clean != before:
        clean, before = without_unknown(clean), clean
    cited = {n for marker in find_markers(clean) for n in marker.numbers}
    if removed:
        log.warning(
            "Removed citation markers %s that match none of the %d sources",
            ", ".join(removed),
            len(known),
        )
    return clean, sorted(cited), removed


def mark_cited(
    sources: Sequence[Source | Mapping[str, Any]], cited: Iterable[int]
) -> list[dict[str, Any]]:
    """Source dicts with `cited` true, or false for passages that were context only."""
    chosen = set(cited)
    out: list[dict[str, Any]] = []
    for s in sources:
        data = s.to_dict() if isinstance(s, Source) else dict(s)
        data["cited"] = _index_of(s) in chosen
        out.append(data)
    return out


def strip_markers(text: str) -> str:
    """Text with every citation marker removed (for history, where numbers mean nothing)."""
    return rewrite_markers(text, lambda _: "").strip()
