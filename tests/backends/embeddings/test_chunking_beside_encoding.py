"""Chunking (the embedder's tokenizer, in worker threads) runs beside document batches: the
next documents of a job, or another job (`ingest.job_workers`). Sharing the model's fast
tokenizer made batches fail with "Unable to create tensor" (seen in bench/ingest_workers.py
with two jobs per worker); chunking has a tokenizer of its own."""

from __future__ import annotations

import threading
import time

import anyio
import pytest

from studyrag.backends.embeddings import sentence_transformers as st
from studyrag.config import EmbeddingsSettings

pytestmark = pytest.mark.slow


def test_offsets_and_document_batches_in_two_threads_never_collide() -> None:
    embedder = st.SentenceTransformersEmbedder(EmbeddingsSettings())
    anyio.run(embedder.start)
    tokenizer = embedder.tokenizer
    expected = tokenizer.offsets("word " * 120)
    errors: list[BaseException] = []
    wrong: list[int] = []
    # Before the fix, this collided within a few seconds on 2 cores.
    stop = time.monotonic() + 10

    def chunk() -> None:
        i = 0
        while time.monotonic() < stop and not errors:
            tokenizer.offsets("word " * (50 + i % 400))
            if tokenizer.offsets("word " * 120) != expected:
                wrong.append(i)
            i += 1

    def encode() -> None:
        i = 0
        while time.monotonic() < stop and not errors:
            texts = ["alpha beta " * (5 + (i + k) % 200) for k in range(8)]
            try:
                vectors = embedder._encode(texts, query=False)
            except Exception as exc:  # noqa: BLE001 - the failure under test
                errors.append(exc)
                return
            assert len(vectors) == 8
            i += 1

    threads = [threading.Thread(target=chunk), threading.Thread(target=encode)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and wrong == []
    anyio.run(embedder.aclose)
