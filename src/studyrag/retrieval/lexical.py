"""Lexical search: SQLite FTS5 BM25 by default, PostgreSQL full text at scale."""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

from studyrag.db.session import Database, fetch_all
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


@dataclass(slots=True)
class LexicalRanking:
    """A lexical top k with what a full match of the query would score."""

    candidates: list[Candidate]
    # The BM25 score of an average-length chunk holding every query term once (the sum of
    # the terms' idf): the scale that says how much of the query a candidate matches.
    # None where the scores are not BM25 (PostgreSQL's ts_rank_cd) or the index is empty.
    full_match: float | None = None


class LexicalIndex:
    """BM25 over chunk text (weight 1) and section path (weight 0.5)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        # SQLite: term document frequencies, valid while the FTS5 structure record is.
        self._version: object = None
        self._rows: int | None = None
        self._df: dict[str, int] = {}
        self._lock = threading.Lock()

    async def search(
        self, query: str, *, top_k: int, filters: SearchFilters | None = None
    ) -> list[Candidate]:
        """Best chunks for `query`, best first; scores are positive, higher is better."""
        return (await self._rank(query, top_k, filters, with_full_match=False)).candidates

    async def rank(
        self, query: str, *, top_k: int, filters: SearchFilters | None = None
    ) -> LexicalRanking:
        """The same top k as search(), with the score a full match of the query would get."""
        return await self._rank(query, top_k, filters, with_full_match=True)

    async def _rank(
        self, query: str, top_k: int, filters: SearchFilters | None, *, with_full_match: bool
    ) -> LexicalRanking:
        terms = query_terms(query)
        if not terms:
            return LexicalRanking([])
        if not self.db.is_sqlite:
            return LexicalRanking(await self._postgres(terms, top_k, filters))

        # All statements of one search in one worker thread, off the async engine, so the
        # full-match score and the top k come from one snapshot.
        def run(conn: Any) -> LexicalRanking:
            full = self._full_match(conn, terms) if with_full_match else None
            return LexicalRanking(self._sqlite_sync(conn, terms, top_k, filters), full)

        return await self.db.read(run)

    def _sqlite_sync(
        self, conn: Any, terms: list[str], top_k: int, filters: SearchFilters | None
    ) -> list[Candidate]:
        """BM25 top-k, skipping rows that can only match very frequent terms (MaxScore).

        FTS5 scores every row that matches any term of an OR query (about 1 µs a row, 20k+
        rows at 100k chunks). A row that contains only "non-essential" terms N scores at
        most UB(N) = Σ idf·(k1+1); once the k-th best row containing an essential term
        scores above UB(N), no such row can enter the top k, so only rows with an essential
        term need scoring. The result is exactly the plain OR query's top k, provided every
        statement reads one snapshot (Database.read runs them in one read transaction).
        """
        plan = self._plan(conn, terms)
        budget = plan.first_budget if plan is not None else 0.0
        for _ in range(2):
            if plan is None:
                break
            frequent = plan.non_essential(budget)
            if not frequent:
                break
            rare = [t for t in terms if t not in frequent]
            rows = self._split_query(conn, rare, frequent, top_k, filters)
            if len(rows) < top_k:
                break  # too few rows with a rare term: the frequent ones must be searched
            kth = -float(rows[-1][1])
            if kth > plan.bound(frequent) * _BOUND_MARGIN:
                return _candidates(rows)
            # The k-th score found is a lower bound of the true one: a second split under
            # it is exact (its rows include the first split's, so its k-th is no lower).
            budget = kth / _BOUND_MARGIN
        return _candidates(self._query(conn, _any(terms), top_k, filters))

    def _query(
        self, conn: Any, match: str, top_k: int, filters: SearchFilters | None
    ) -> list[tuple[Any, ...]]:
        sql, params = _scored_select(match, filters, "")
        params["k"] = top_k
        return fetch_all(conn, sql + " ORDER BY s LIMIT :k", params)

    def _split_query(
        self,
        conn: Any,
        rare: list[str],
        frequent: list[str],
        top_k: int,
        filters: SearchFilters | None,
    ) -> list[tuple[Any, ...]]:
        # Rows with a rare term, in two disjoint parts, so every query term is a phrase of
        # the MATCH exactly once and bm25() is the full query's score: with a frequent term
        # too (AND), and without any (NOT: the frequent phrases count zero there).
        both, both_params = _scored_select(f"({_any(rare)}) AND ({_any(frequent)})", filters, "a")
        only, only_params = _scored_select(f"({_any(rare)}) NOT ({_any(frequent)})", filters, "b")
        sql = f"SELECT id, s FROM ({both} UNION ALL {only}) ORDER BY s LIMIT :k"
        return fetch_all(conn, sql, {**both_params, **only_params, "k": top_k})

    def _plan(self, conn: Any, terms: list[str]) -> _Plan | None:
        """Document frequencies of the terms, cached until the FTS index changes."""
        if len(terms) < 2:
            return None
        rows, df = self._frequencies(conn, terms, min_rows=_SPLIT_MIN_ROWS)
        if rows is None:
            return None  # small index: scoring every match is cheaper than planning
        return _Plan({t: _upper_bound(rows, df[t]) for t in terms})

    def _full_match(self, conn: Any, terms: list[str]) -> float | None:
        """Σ idf of the terms: the BM25 score of an average-length chunk holding each once."""
        rows, df = self._frequencies(conn, terms, min_rows=1)
        if rows is None:
            return None
        return sum(_idf(rows, df[t]) for t in terms)

    def _frequencies(
        self, conn: Any, terms: list[str], *, min_rows: int
    ) -> tuple[int | None, dict[str, int]]:
        """(rows, document frequency of each term); rows None below `min_rows` (nothing counted)."""
        # FTS5's averages record (id 1) starts with the row count; its structure record
        # (id 10) changes with every committed write, so it versions the cached counts.
        records = dict(fetch_all(conn, "SELECT id, block FROM chunks_fts_data WHERE id IN (1, 10)"))
        rows = _varint(records.get(1))
        if rows is None or rows < min_rows:
            return None, {}
        with self._lock:
            if records.get(10) != self._version or rows != self._rows:
                self._version, self._rows, self._df = records.get(10), rows, {}
            df = dict(self._df)
        missing = [t for t in terms if t not in df]
        if missing:
            sql = " UNION ALL ".join(
                f"SELECT {i}, count(*) FROM chunks_fts WHERE chunks_fts MATCH :t{i}"
                for i in range(len(missing))
            )
            params: dict[str, object] = {f"t{i}": _phrase(t) for i, t in enumerate(missing)}
            counted = {missing[int(i)]: int(n) for i, n in fetch_all(conn, sql, params)}
            df.update(counted)
            with self._lock:
                if records.get(10) == self._version:
                    if len(self._df) > _DF_CACHE_TERMS:
                        self._df = {}
                    self._df.update(counted)
        return rows, df

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


def _filter_sql(
    filters: SearchFilters | None, params: dict[str, object], prefix: str = ""
) -> list[str]:
    clauses: list[str] = []
    if filters is None:
        return clauses
    if filters.notebook_id:
        params[f"{prefix}nb"] = filters.notebook_id
        clauses.append(f"d.notebook_id = :{prefix}nb")
    if filters.document_ids:
        names = [f"{prefix}did{i}" for i in range(len(filters.document_ids))]
        params.update(zip(names, filters.document_ids, strict=True))
        clauses.append(f"d.id IN ({', '.join(':' + n for n in names)})")
    if filters.file_types:
        names = [f"{prefix}ft{i}" for i in range(len(filters.file_types))]
        params.update(zip(names, filters.file_types, strict=True))
        clauses.append(f"d.file_type IN ({', '.join(':' + n for n in names)})")
    return clauses


# --- SQLite FTS5 helpers -----------------------------------------------------------------
# FTS5's bm25(): k1 = 1.2, b = 0.75; a term's share of a row's score is below idf·(k1 + 1).
_K1 = 1.2
_BOUND_MARGIN = 1.000001  # float rounding must never turn "below the bound" into "above"
_DF_CACHE_TERMS = 50_000
_FIRST_BUDGET = 0.5  # first guess of the k-th score, as a share of the rarest term's bound
# Below this many rows a plain OR query takes a few ms, less than planning would save.
_SPLIT_MIN_ROWS = 20_000


def _varint(record: bytes | None) -> int | None:
    """The SQLite varint at the start of an FTS5 record (None if there is none)."""
    if not record:
        return None
    value = 0
    for i, byte in enumerate(record[:9]):
        if i == 8:
            return (value << 8) | byte
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            return value
    return None


def _idf(rows: int, df: int) -> float:
    """FTS5's own idf, floored as FTS5 floors it (a term in most rows still counts a little)."""
    idf = math.log((rows - df + 0.5) / (df + 0.5)) if rows else 0.0
    return max(idf, 1e-6)


def _upper_bound(rows: int, df: int) -> float:
    """The most a term can add to a row's bm25() score."""
    return _idf(rows, df) * (_K1 + 1)


@dataclass(slots=True)
class _Plan:
    bounds: dict[str, float]

    @property
    def first_budget(self) -> float:
        return _FIRST_BUDGET * max(self.bounds.values())

    def non_essential(self, budget: float) -> list[str]:
        """The most frequent terms whose bounds add up to less than `budget` (one stays)."""
        chosen: list[str] = []
        total = 0.0
        for term in sorted(self.bounds, key=self.bounds.__getitem__)[:-1]:
            if total + self.bounds[term] >= budget:
                break
            chosen.append(term)
            total += self.bounds[term]
        return chosen

    def bound(self, terms: list[str]) -> float:
        return sum(self.bounds[t] for t in terms)


def _candidates(rows: list[tuple[Any, ...]]) -> list[Candidate]:
    # FTS5's bm25() is negative (more negative = better); flip it.
    return [Candidate(int(r[0]), -float(r[1])) for r in rows]


def _phrase(term: str) -> str:
    return '"' + term.replace('"', '""') + '"'


def _any(terms: list[str]) -> str:
    return " OR ".join(_phrase(t) for t in terms)


def _scored_select(
    match: str, filters: SearchFilters | None, prefix: str
) -> tuple[str, dict[str, object]]:
    """SELECT id, s (bm25, lower is better) of the rows matching `match`, filters applied."""
    params: dict[str, object] = {f"q{prefix}": match}
    if filters is None or filters.empty:
        # No join: ranking the FTS table alone is 2-3x faster, and the caller drops chunks
        # of documents that are not completed yet (SearchService joins them afterwards).
        return (
            "SELECT rowid AS id, bm25(chunks_fts, 1.0, 0.5) AS s FROM chunks_fts "
            f"WHERE chunks_fts MATCH :q{prefix}",
            params,
        )
    where = [f"chunks_fts MATCH :q{prefix}", "d.status = 'completed'"]
    where += _filter_sql(filters, params, prefix)
    return (
        "SELECT c.id AS id, bm25(chunks_fts, 1.0, 0.5) AS s FROM chunks_fts "
        "JOIN chunks c ON c.id = chunks_fts.rowid "
        "JOIN documents d ON d.id = c.document_id "
        f"WHERE {' AND '.join(where)}",
        params,
    )
