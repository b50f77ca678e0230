"""Queries do not wait for a document batch: they run beside it on a view of the same
weights with their own tokenizer, and give exactly the vectors the model gives."""

from __future__ import annotations

import asyncio

import pytest

from studyrag.backends.embeddings import sentence_transformers as st
from studyrag.config import EmbeddingsSettings

pytestmark = pytest.mark.slow


async def test_a_query_is_answered_while_a_document_batch_holds_the_model() -> None:
    embedder = st.SentenceTransformersEmbedder(EmbeddingsSettings())
    await embedder.start()
    alone = await embedder.embed_documents(["Chlorophyll absorbs red and blue light."])
    with st._DOCUMENTS_LOCK:  # a long document batch is being encoded
        vector = await asyncio.wait_for(
            embedder.embed_query("Chlorophyll absorbs red and blue light."), timeout=60
        )
    assert vector == pytest.approx(alone[0], abs=1e-6)
    key = (embedder._path, embedder.settings.device)
    view = st._QUERY_VIEWS[key]
    model = st._MODELS[key]
    # Same weights, own tokenizer: nothing to share between the two threads but read-only.
    assert view[0].auto_model is model[0].auto_model
    assert view[0].tokenizer is not model[0].tokenizer
    await embedder.aclose()
