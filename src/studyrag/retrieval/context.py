"""The context builder: best chunks up to a token budget, deduplicated, numbered."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from studyrag.retrieval.types import SearchResult


@dataclass(slots=True)
class Source:
    """A numbered passage the answer may cite as [index]."""

    index: int
    document_id: str
    filename: str
    page: int | None
    section: str
    chunk_id: int
    score: float
    text: str
    start: int
    end: int
    title: str | None = None

    @property
    def excerpt(self) -> str:
        return self.text if len(self.text) <= 300 else self.text[:297].rstrip() + "…"

    def to_dict(self, *, with_text: bool = False) -> dict[str, Any]:
        data = asdict(self)
        if not with_text:
            data.pop("text")
        data["excerpt"] = self.excerpt
        return data

    def label(self) -> str:
        """Where the passage is: 'file.pdf, p. 2, Intro > Scope'."""
        parts = [self.filename]
        if self.page is not None:
            parts.append(f"p. {self.page}")
        if self.section:
            parts.append(self.section)
        return ", ".join(parts)


@dataclass(slots=True)
class Context:
    sources: list[Source]
    text: str
    tokens: int


def build_context(
    results: list[SearchResult],
    *,
    budget: int,
    count_tokens: Callable[[str], int],
) -> Context:
    """Take results in rank order, skip duplicates and overlaps, stop at the token budget."""
    sources: list[Source] = []
    blocks: list[str] = []
    used = 0
    seen_text: set[str] = set()
    spans: dict[str, list[tuple[int, int]]] = {}
    for r in results:
        key = " ".join(r.text.split()).lower()
        if key in seen_text:
            continue
        # Overlapping windows of one document say the same thing twice.
        if any(_overlap(r.start, r.end, s, e) > 0.5 for s, e in spans.get(r.document_id, [])):
            continue
        index = len(sources) + 1
        source = Source(
            index=index,
            document_id=r.document_id,
            filename=r.filename,
            page=r.page,
            section=r.section,
            chunk_id=r.chunk_id,
            score=r.score,
            text=r.text,
            start=r.start,
            end=r.end,
            title=r.document.get("title"),
        )
        block = f"[{index}] {source.label()}\n{r.text}"
        cost = count_tokens(block) + 2
        if used + cost > budget:
            if sources:
                break
            # Always keep the best passage, trimmed to fit.
            block = _trim_to(block, budget, count_tokens)
            cost = count_tokens(block)
            source.text = block.split("\n", 1)[1] if "\n" in block else block
        sources.append(source)
        blocks.append(block)
        used += cost
        seen_text.add(key)
        spans.setdefault(r.document_id, []).append((r.start, r.end))
    return Context(sources=sources, text="\n\n".join(blocks), tokens=used)


def _overlap(a0: int, a1: int, b0: int, b1: int) -> float:
    inter = max(0, min(a1, b1) - max(a0, b0))
    shorter = max(1, min(a1 - a0, b1 - b0))
    return inter / shorter


def _trim_to(text: str, budget: int, count_tokens: Callable[[str], int]) -> str:
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens(text[:mid]) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]
