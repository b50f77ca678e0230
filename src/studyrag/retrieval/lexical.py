"""Lexical search: SQLite FTS5 BM25 by default, PostgreSQL full text at scale."""

from __future__ import annotations

import re

from sqlalchemy import text

from studyrag.db.session import Database
from studyrag.retrieval.types import Candidate, SearchFilters

# Common English words carry no signal in an OR query and make FTS scan far more rows.
STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it
    its itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself
    yourselves""".split()
)

_WORD = re.compile(r"\w+", re.UNICODE)


def query_terms(query: str) -> list[str]:
    """Distinct lower-case terms of a query, stopwords dropped (kept if nothing else is left)."""
    words = [w.lower() for w in _WORD.findall(query)]
    kept = [w for w in words if w not in STOPWORDS]
    return list(dict.fromkeys(kept or words))


class LexicalIndex:
    """BM25 over chunk text (weight 1) and section path (weight 0.5)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def search(
        self, query: str, *, top_k: int, filters: SearchFilters | None = None
    ) -> list[Candidate]:
        """Best chunks for `query`, best first; scores are positive, higher is better."""
        terms = query_terms(query)
        if not terms:
            return []
        if self.db.is_sqlite:
            return await self._sqlite(terms, top_k, filters)
        return await self._postgres(terms, top_k, filters)

    async def _sqlite(
        self, terms: list[str], top_k: int, filters: SearchFilters | None
    ) -> list[Candidate]:
        match = " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)
        params: dict[str, object] = {"q": match, "k": top_k}
        if filters is None or filters.empty:
            # No join: ranking the FTS table alone is 2-3x faster, and the caller drops chunks
            # of documents that are not completed yet (SearchService joins them afterwards).
            sql = (
                "SELECT rowid AS id, bm25(chunks_fts, 1.0, 0.5) AS s FROM chunks_fts "
                "WHERE chunks_fts MATCH :q ORDER BY s LIMIT :k"
            )
            async with self.db.session() as s:
                rows = (await s.execute(text(sql), params)).all()
            return [Candidate(int(r.id), -float(r.s)) for r in rows]
        where = ["chunks_fts MATCH :q", "d.status = 'completed'"]
        where += _filter_sql(filters, params)
        sql = (
            "SELECT c.id AS id, bm25(chunks_fts, 1.0, 0.5) AS s FROM chunks_fts "
            "JOIN chunks c ON c.id = chunks_fts.rowid "
            "JOIN documents d ON d.id = c.document_id "
            f"WHERE {' AND '.join(where)} ORDER BY s LIMIT :k"
        )
        async with self.db.session() as s:
            rows = (await s.execute(text(sql), params)).all()
        # FTS5's bm25() is negative (more negative = better); flip it.
        return [Candidate(int(r.id), -float(r.s)) for r in rows]

    async def _postgres(
        self, terms: list[str], top_k: int, filters: SearchFilters | None
    ) -> list[Candidate]:
        # Terms are \w+ only, so they are safe inside to_tsquery; OR keeps BM25-like recall.
        params: dict[str, object] = {"q": " | ".join(terms), "k": top_k}
        where = ["c.tsv @@ q", "d.status = 'completed'"]
        where += _filter_sql(filters, params)
        sql = (
            "SELECT c.id AS id, ts_rank_cd(c.tsv, q, 32) AS s "
            "FROM chunks c JOIN documents d ON d.id = c.document_id, "
            "to_tsquery('english', :q) q "
            f"WHERE {' AND '.join(where)} ORDER BY s DESC LIMIT :k"
        )
        async with self.db.session() as s:
            rows = (await s.execute(text(sql), params)).all()
        return [Candidate(int(r.id), float(r.s)) for r in rows]


def _filter_sql(filters: SearchFilters | None, params: dict[str, object]) -> list[str]:
    clauses: list[str] = []
    if filters is None:
        return clauses
    if filters.document_ids:
        names = [f"did{i}" for i in range(len(filters.document_ids))]
        params.update(zip(names, filters.document_ids, strict=True))
        clauses.append(f"d.id IN ({', '.join(':' + n for n in names)})")
    if filters.file_types:
        names = [f"ft{i}" for i in range(len(filters.file_types))]
        params.update(zip(names, filters.file_types, strict=True))
        clauses.append(f"d.file_type IN ({', '.join(':' + n for n in names)})")
    return clauses
