"""Prompt templates and the prompt builder's trimming order."""

from __future__ import annotations

import pytest

from studyrag.backends.llm.base import ChatMessage
from studyrag.chat.prompts import (
    BUILTIN_TEMPLATES,
    DEFAULT_USER,
    NO_SOURCES,
    RAG_BASIC,
    SYSTEM_DEFAULT,
    available_templates,
    build_prompt,
    fit_prompt,
    get_template,
    parse_rewrite,
    parse_template,
    render_context,
    rewrite_prompt,
)
from studyrag.errors import ContextTooLong, InvalidChatRequest
from studyrag.retrieval.context import Source


def words(text: str) -> int:
    return len(text.split())


def _source(index: int, n_words: int = 50) -> Source:
    return Source(
        index=index,
        document_id="d",
        filename="bio.md",
        page=None,
        section=f"Part {index}",
        chunk_id=index,
        score=1.0 / index,
        text=" ".join(f"w{index}_{i}" for i in range(n_words)),
        start=index * 1000,
        end=index * 1000 + 500,
    )


def _history(turns: int, n_words: int = 30) -> list[ChatMessage]:
    out = []
    for t in range(turns):
        out.append(ChatMessage("user", f"question{t} " + "q " * n_words))
        out.append(ChatMessage("assistant", f"answer{t} " + "a " * n_words))
    return out


def _fit(window: int, history: list[ChatMessage], sources: list[Source], question: str = "Why?"):
    return fit_prompt(
        RAG_BASIC,
        question=question,
        context_text=render_context(sources),
        history=history,
        count_tokens=words,
        context_window=window,
        max_tokens=100,
        sources=sources,
    )


def _tokens(messages: list[ChatMessage]) -> int:
    return sum(words(m.content) + 4 for m in messages) + 4


# --- templates ---------------------------------------------------------------------------
def test_builtin_templates_ground_and_cite() -> None:
    assert set(BUILTIN_TEMPLATES) == {
        "RAG_BASIC",
        "RAG_DETAILED",
        "RAG_CONVERSATIONAL",
        "RAG_ANALYTICAL",
        "RAG_CREATIVE",
        "SYSTEM_DEFAULT",
    }
    for tpl in BUILTIN_TEMPLATES.values():
        assert "only the numbered sources" in tpl.system
        assert "[1]" in tpl.system
        assert "{context}" in tpl.user and "{question}" in tpl.user
        # Tiny models need tiny instructions.
        assert len(tpl.system.split()) < 60


def test_unknown_template_lists_names() -> None:
    with pytest.raises(InvalidChatRequest) as info:
        get_template("NOPE", {"MINE": "Be terse."})
    assert info.value.error_code == "CHAT_006"
    assert "MINE" in info.value.details["available"]
    assert "RAG_BASIC" in info.value.details["available"]


def test_user_templates_override_and_add() -> None:
    templates = available_templates(
        {
            "RAG_BASIC": "Answer in French.",
            "QUIZ": "Make a quiz.\n---\n{context}\nTopic: {question}",
        }
    )
    assert templates["RAG_BASIC"].system == "Answer in French."
    assert templates["RAG_BASIC"].user == DEFAULT_USER
    assert templates["QUIZ"].system == "Make a quiz."
    assert templates["QUIZ"].user == "{context}\nTopic: {question}"
    assert get_template("QUIZ", {"QUIZ": "x"}).system == "x"


def test_parse_template_fills_missing_parts() -> None:
    only_user = parse_template("U", "Q: {question}")
    assert only_user.system == SYSTEM_DEFAULT.system
    assert only_user.user.startswith("Sources:\n{context}") and "Q: {question}" in only_user.user
    no_question = parse_template("N", "Be brief.\n---\nRead {context}")
    assert "{question}" in no_question.user


def test_render_does_not_substitute_inside_values() -> None:
    system, user = RAG_BASIC.render(context="doc says {question}", question="q {context}")
    assert "doc says {question}" in user and "q {context}" in user


# --- fitting -----------------------------------------------------------------------------
def test_everything_fits_in_a_large_window() -> None:
    sources = [_source(i) for i in (1, 2, 3)]
    history = _history(2)
    fit = _fit(10_000, history, sources)
    roles = [m.role for m in fit.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert fit.messages[1:-1] == history
    assert fit.sources == sources and fit.history_dropped == 0 and fit.sources_dropped == []
    assert "[3] bio.md, Part 3" in fit.messages[-1].content
    assert fit.prompt_tokens == _tokens(fit.messages)


def test_history_goes_first_oldest_first() -> None:
    sources = [_source(i) for i in (1, 2, 3)]
    history = _history(3)  # 6 messages of ~32 words
    full = _fit(10_000, history, sources)
    # Room for everything but one exchange.
    window = full.prompt_tokens + 100 - 50
    fit = _fit(window, history, sources)
    assert fit.sources == sources  # no source dropped while history could go
    assert fit.history_dropped == 2
    assert fit.messages[1:-1] == history[2:]
    assert fit.messages[1].role == "user"
    assert fit.prompt_tokens <= window - 100


def test_sources_go_lowest_ranked_first_after_history() -> None:
    sources = [_source(i) for i in (1, 2, 3)]
    history = _history(2)
    no_history = _fit(10_000, [], sources)
    window = no_history.prompt_tokens + 100 - 40  # one source too many
    fit = _fit(window, history, sources)
    assert fit.history_used == 0 and fit.history_dropped == 4
    assert [s.index for s in fit.sources] == [1, 2]
    assert fit.sources_dropped == [3]
    user = fit.messages[-1].content
    assert "[2] bio.md" in user and "[3]" not in user and "w3_0" not in user
    assert fit.prompt_tokens <= window - 100


def test_last_source_is_truncated_before_it_is_dropped() -> None:
    sources = [_source(1, n_words=400), _source(2)]
    fit = _fit(300, [], sources)
    assert [s.index for s in fit.sources] == [1]
    assert fit.truncated_source == 1
    assert fit.sources[0].text.endswith("…")
    assert len(fit.sources[0].text.split()) < 400
    assert sources[0].text.count(" ") == 399  # the caller's source is untouched
    assert fit.prompt_tokens <= 300 - 100


def test_no_room_for_any_source_keeps_the_question() -> None:
    question = " ".join(["word"] * 125)
    fit = _fit(280, [], [_source(1)], question=question)
    assert fit.sources == [] and fit.sources_dropped == [1]
    assert NO_SOURCES in fit.messages[-1].content and question in fit.messages[-1].content


def test_question_alone_too_long_raises() -> None:
    question = " ".join(["word"] * 300)
    with pytest.raises(ContextTooLong) as info:
        _fit(300, _history(1), [_source(1)], question=question)
    assert info.value.error_code == "CHAT_003"


def test_build_prompt_returns_messages() -> None:
    sources = [_source(1)]
    messages = build_prompt(
        "RAG_BASIC",
        question="What?",
        context_text=render_context(sources),
        history=[],
        count_tokens=words,
        context_window=2048,
        max_tokens=100,
        sources=sources,
    )
    assert [m.role for m in messages] == ["system", "user"]
    assert messages[-1].content.endswith("Question: What?")


# --- follow-up rewriting -----------------------------------------------------------------
def test_rewrite_prompt_is_short_and_recent() -> None:
    history = _history(4, n_words=200)
    messages = rewrite_prompt(history, "And why does it matter?")
    assert [m.role for m in messages] == ["system", "user"]
    user = messages[1].content
    assert "question3" in user and "question1" not in user  # last 4 turns only
    assert user.endswith("Last question: And why does it matter?")
    assert len(user) < 4 * (300 + 20) + 100  # each turn clipped to 300 characters


def test_parse_rewrite() -> None:
    assert parse_rewrite('Standalone query: "chlorophyll role"\nmore', "q") == "chlorophyll role"
    assert parse_rewrite("  \n", "fallback") == "fallback"
    assert parse_rewrite("x" * 1000, "fallback") == "fallback"
