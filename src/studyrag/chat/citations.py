"""Citation markers in answers: [1], [1, 2], [1][2], [1-3], [Source 2] resolved to sources."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
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


def _numbers(body: str) -> list[int]:
    out: list[int] = []
    for part in re.split(r"\s*(?:,|;|and)\s*", body):
        bounds = [int(x) for x in re.split(r"\s*[-–]\s*", part) if x]
        if len(bounds) == 2 and 0 <= bounds[1] - bounds[0] <= _MAX_RANGE:
            out.extend(range(bounds[0], bounds[1] + 1))
        else:
            out.extend(bounds)
    return out


def _index_of(source: Source | Mapping[str, Any]) -> int:
    return int(source.index if isinstance(source, Source) else source["index"])


def resolve_citations(
    answer: str, sources: Sequence[Source | Mapping[str, Any]]
) -> tuple[str, list[int], list[str]]:
    """(answer without unknown markers, cited source indexes sorted, removed markers)."""
    known = {_index_of(s) for s in sources}
    cited: set[int] = set()
    removed: list[str] = []

    def replace(match: re.Match[str]) -> str:
        numbers = list(dict.fromkeys(_numbers(match.group("body"))))
        valid = [n for n in numbers if n in known]
        bad = [n for n in numbers if n not in known]
        cited.update(valid)
        removed.extend(f"[{n}]" for n in bad)
        if not bad:
            return match.group(0)
        if not valid:
            # The leading space goes too, so "word [9]." becomes "word.".
            return ""
        return f"{match.group('lead')}[{', '.join(str(n) for n in valid)}]"

    clean = _MARKER.sub(replace, answer).strip()
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
    return _MARKER.sub("", text).strip()
