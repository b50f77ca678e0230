"""SearchService: one entry point for lexical, semantic and hybrid search."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Any, get_args

from studyrag.config import SearchSettings
from studyrag.db.repo import DocumentRepo
from studyrag.errors import EmptyQuery, InvalidSearchRequest
from studyrag.observability.metrics import Metrics
from studyrag.retrieval.hybrid import fusion_weights, reciprocal_rank_fusion, score_fusion
from studyrag.retrieval.lexical import LexicalIndex, query_terms
from studyrag.retrieval.semantic import SemanticIndex
from studyrag.retrieval.types import Candidate, SearchFilters, SearchMode, SearchResult

MODES: tuple[str, ...] = get_args(SearchMode)
# The most passages one search returns, and the most documents / file types it filters on.
MAX_TOP_K = 200
MAX_FILTER_DOCUMENTS = 200
MAX_FILTER_FILE_TYPES = 20


@dataclass(slots=True)
class SearchResponse:
    query: str
    mode: str
    results: list[SearchResult]
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "mode": self.mode,
            "results": [r.to_dict() for r in self.results],
            "timings": self.timings,
        }


class SearchService:
    """Runs a mode, joins candidates with their chunk and document rows, builds snippets."""

    def __init__(
        self,
        *,
        repo: DocumentRepo,
        lexical: LexicalIndex,
        semantic: SemanticIndex,
        settings: SearchSettings,
        metrics: Metrics | None = None,
    ) -> None:
        self.repo = repo
        self.metrics = metrics or Metrics()
        self.lexical = lexical
        self.semantic = semantic
        self.settings = settings

    async def search(
        self,
        query: str,
        *,
        mode: str | None = None,
        top_k: int | None = None,
        min_score: float | None = None,
        filters: SearchFilters | None = None,
        group_by_document: bool = False,
    ) -> SearchResponse:
        """Ranked passages for `query`; raises SEARCH_001 for an empty query.

        `filters.notebook_id` scopes the search to one notebook (the caller resolves the
        default); its documents are the only ones returned, whatever the indexes hold.
        """
        query = (query or "").strip()
        if not query:
            raise EmptyQuery("The search query is empty.")
        mode = mode or self.settings.mode
        if mode not in MODES:
            raise InvalidSearchRequest(
                f"Unknown search mode {mode!r}.", hint=f"Use one of: {', '.join(MODES)}."
            )
        top_k = top_k or self.settings.top_k
        if top_k < 1 or top_k > MAX_TOP_K:
            raise InvalidSearchRequest(f"top_k must be between 1 and {MAX_TOP_K}.")
        min_score = self.settings.min_score if min_score is None else min_score
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        # Grouping needs more candidates, since several may come from one document.
        want = max(top_k * (5 if group_by_document else 1), self.settings.candidates)
        notebook_id = filters.notebook_id if filters is not None else None
        index_filters = await self._index_filters(filters)
        scored = await self._rank(query, mode, want, index_filters, timings)  # type: ignore[arg-type]
        t1 = time.perf_counter()
        terms = query_terms(query)
        scored = [item for item in scored if item[1] >= min_score]
        results: list[SearchResult] = []
        seen_docs: dict[str, SearchResult] = {}
        # Rows are fetched a slice at a time: usually the first slice already holds top_k
        # searchable chunks, and fetching all candidates' texts costs more than ranking them.
        step = max(1, len(scored)) if group_by_document else max(2 * top_k, 20)
        for begin in range(0, len(scored), step):
            part = scored[begin : begin + step]
            rows = await self.repo.searchable_chunks(
                (cid for cid, _, _ in part), notebook_id=notebook_id
            )
            for cid, score, per_mode in part:
                if cid not in rows:
                    continue
                chunk, doc = rows[cid]
                if group_by_document and doc.id in seen_docs:
                    seen_docs[doc.id].matches += 1
                    continue
                result = SearchResult(
                    rank=len(results) + 1,
                    score=round(score, 6),
                    chunk_id=chunk.id,
                    document_id=doc.id,
                    filename=doc.filename,
                    file_type=doc.file_type,
                    page=chunk.page,
                    section=chunk.section,
                    start=chunk.start_char,
                    end=chunk.end_char,
                    text=chunk.text,
                    snippet=highlight(chunk.text, terms),
                    scores={k: round(v, 6) for k, v in per_mode.items()},
                    document={"title": doc.meta.get("title"), **_doc_meta(doc.meta)},
                    notebook_id=doc.notebook_id,
                )
                results.append(result)
                seen_docs[doc.id] = result
                if len(results) >= top_k and not group_by_document:
                    break
            if len(results) >= top_k and not group_by_document:
                break
        results = results[:top_k]
        timings["fetch_ms"] = round((time.perf_counter() - t1) * 1000, 2)
        elapsed = time.perf_counter() - t0
        timings["total_ms"] = round(elapsed * 1000, 2)
        self.metrics.search_duration.labels(mode=mode).observe(elapsed)
        return SearchResponse(query=query, mode=mode, results=results, timings=timings)

    async def _index_filters(self, filters: SearchFilters | None) -> SearchFilters | None:
        """The filters the indexes need: none for a notebook that holds every document.

        Filtering by notebook inside the indexes costs a join (FTS5) or a metadata scan
        (Chroma) on every query; when the notebook is the only one with documents the
        filter changes nothing, and the row fetch still checks the notebook of every hit.
        """
        if filters is None or not filters.notebook_id:
            return filters
        holding = await self.repo.notebooks_holding_documents()
        if holding != [filters.notebook_id]:
            return filters
        bare = SearchFilters(document_ids=filters.document_ids, file_types=filters.file_types)
        return None if bare.empty else bare

    async def _rank(
        self,
        query: str,
        mode: SearchMode,
        want: int,
        filters: SearchFilters | None,
        timings: dict[str, float],
    ) -> list[tuple[int, float, dict[str, float]]]:
        async def timed(name: str, coro: Any) -> Any:
            t = time.perf_counter()
            out = await coro
            timings[f"{name}_ms"] = round((time.perf_counter() - t) * 1000, 2)
            return out

        if mode == "lexical":
            lex = await timed("lexical", self.lexical.search(query, top_k=want, filters=filters))
            return [(c.chunk_id, c.score, {"lexical": c.score}) for c in lex]
        if mode == "semantic":
            sem = await timed("semantic", self.semantic.search(query, top_k=want, filters=filters))
            return [(c.chunk_id, c.score, {"semantic": c.score}) for c in sem]
        sem, ranked = await asyncio.gather(
            timed("semantic", self.semantic.search(query, top_k=want, filters=filters)),
            timed("lexical", self.lexical.rank(query, top_k=want, filters=filters)),
        )
        rankings: dict[str, list[Candidate]] = {"semantic": sem, "lexical": ranked.candidates}
        settings = self.settings
        if settings.fusion == "rrf":
            return reciprocal_rank_fusion(
                rankings,
                weights={"semantic": settings.semantic_weight, "lexical": settings.lexical_weight},
                k=settings.rrf_k,
            )
        weights = fusion_weights(
            ranked.candidates,
            ranked.full_match,
            semantic_weight=settings.semantic_weight,
            lexical_weight=settings.lexical_weight,
        )
        return score_fusion(rankings, weights=weights)


def _doc_meta(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: meta[k] for k in ("author", "page_count") if k in meta}


def highlight(text: str, terms: list[str], *, width: int = 240) -> str:
    """A window of `text` around the densest query-term matches, terms wrapped in <mark>."""
    if not terms:
        return text[:width]
    # Prefix match so "absorbs" highlights for "absorb" (the index stems too).
    stems = sorted({t[:5] if len(t) > 5 else t for t in terms}, key=len, reverse=True)
    pattern = re.compile(r"\b(" + "|".join(re.escape(s) for s in stems) + r")\w*", re.IGNORECASE)
    matches = list(pattern.finditer(text))
    if not matches:
        return _shorten(text, 0, width)
    best_start, best_count = matches[0].start(), 0
    for i, m in enumerate(matches):
        count = sum(1 for n in matches[i:] if n.start() - m.start() <= width)
        if count > best_count:
            best_start, best_count = m.start(), count
    start = max(0, best_start - width // 4)
    window = _shorten(text, start, width)
    return pattern.sub(lambda m: f"<mark>{m.group(0)}</mark>", window)


def _shorten(text: str, start: int, width: int) -> str:
    end = min(len(text), start + width)
    if start > 0:
        space = text.find(" ", start)
        start = space + 1 if 0 <= space < start + 20 else start
    if end < len(text):
        space = text.rfind(" ", start, end)
        end = space if space > start + width // 2 else end
    return ("…" if start > 0 else "") + text[start:end].strip() + ("…" if end < len(text) else "")
