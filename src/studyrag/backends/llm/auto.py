"""build_chat_model: the ChatModel that settings.provider names, imported only when chosen."""

from __future__ import annotations

import importlib
import logging

from studyrag.backends.llm.base import ChatModel
from studyrag.config import LLMSettings
from studyrag.errors import ConfigError

log = logging.getLogger(__name__)

# Seconds the `auto` provider waits for Ollama: long enough for a local server, short enough
# not to delay start-up noticeably when none runs.
PROBE_WAIT = 1.0

# provider -> (module, class, package to install when the import fails)
_PROVIDERS: dict[str, tuple[str, str, str]] = {
    "llamacpp": ("studyrag.backends.llm.llamacpp", "LlamaCppChatModel", "llama-cpp-python"),
    "ollama": ("studyrag.backends.llm.ollama", "OllamaChatModel", "ollama"),
    "openai": ("studyrag.backends.llm.openai", "OpenAIChatModel", "openai"),
}


def build_chat_model(settings: LLMSettings) -> ChatModel:
    """The ChatModel for settings.provider; `auto` probes Ollama synchronously (at most 1 s).

    In async code prefer `abuild_chat_model`, whose probe does not block the event loop.
    """
    if settings.provider != "auto":
        return _construct(settings.provider, settings)
    from studyrag.backends.llm.ollama import probe_ollama_sync

    return _construct(
        _choose(settings, probe_ollama_sync(settings.ollama_url, wait=PROBE_WAIT)), settings
    )


async def abuild_chat_model(settings: LLMSettings) -> ChatModel:
    """build_chat_model for async callers: the `auto` probe awaits instead of blocking."""
    if settings.provider != "auto":
        return _construct(settings.provider, settings)
    from studyrag.backends.llm.ollama import probe_ollama

    version = await probe_ollama(settings.ollama_url, wait=PROBE_WAIT)
    return _construct(_choose(settings, version), settings)


def _choose(settings: LLMSettings, ollama_version: str | None) -> str:
    if ollama_version is not None:
        log.info(
            "chat provider auto: Ollama %s answers at %s, using it with model %s",
            ollama_version or "(unknown version)",
            settings.ollama_url,
            settings.model,
        )
        return "ollama"
    log.info(
        "chat provider auto: no Ollama at %s, using the embedded llama.cpp model %s",
        settings.ollama_url,
        settings.model_path or "SmolLM2-135M-Instruct",
    )
    return "llamacpp"


def _construct(provider: str, settings: LLMSettings) -> ChatModel:
    try:
        module_name, class_name, package = _PROVIDERS[provider]
    except KeyError:
        raise ConfigError(
            f"Unknown chat provider '{provider}'; set STUDYRAG_LLM__PROVIDER to one of "
            "llamacpp, ollama, openai or auto.",
        ) from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"The {provider} chat provider needs the `{package}` package, which is not installed.",
            hint=f"Install it with: pip install {package}",
        ) from exc
    model: ChatModel = getattr(module, class_name)(settings)
    return model
