"""Batches reach the model padded to a few sequence lengths, on fixed threads, and the
vectors are the ones the unpadded model gives (pad tokens are masked out)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from studyrag.backends.embeddings import sentence_transformers as st
from studyrag.config import EmbeddingsSettings

pytestmark = pytest.mark.slow

TEXTS = [
    "ATP",
    "Mitochondria make most of the cell's ATP.",
    "The 2019 capital expenditure was $1,577 million, up from $1,330 million in 2018, "
    "mostly for new plants in Asia and the renewal of existing lines.",
]


async def test_batches_are_padded_to_a_multiple_of_32_tokens_without_changing_vectors() -> None:
    embedder = st.SentenceTransformersEmbedder(EmbeddingsSettings())
    await embedder.start()
    key = (embedder._path, embedder.settings.device)
    widths: list[int] = []
    threads: list[str] = []

    def record(_module: Any, args: Any, kwargs: Any) -> None:
        ids = kwargs.get("input_ids")
        if ids is None:
            ids = args[0]
        widths.append(int(ids.shape[1]))
        threads.append(threading.current_thread().name)

    model = st._MODELS[key]
    # ST calls the model's forward directly; its embedding layer is called as a module.
    hook = model[0].auto_model.embeddings.register_forward_pre_hook(record, with_kwargs=True)
    try:
        queries = [await embedder.embed_query(t) for t in TEXTS]
        queries += await embedder.embed_queries(TEXTS)
        documents = await embedder.embed_documents(TEXTS)
    finally:
        hook.remove()
    assert widths and all(w % st.PAD_TO_MULTIPLE_OF == 0 for w in widths), widths
    # Queries on one thread of their own, documents on theirs: never a pool's passing worker.
    assert {t.split("_")[0] for t in threads} == {"studyrag-query", "studyrag-embed"}, threads

    unpadded = model.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    for got in (queries[:3], queries[3:], documents):
        for vector, expected in zip(got, unpadded, strict=True):
            assert vector == pytest.approx(expected.tolist(), abs=1e-5)
    await embedder.aclose()
