"""Prompt templates and the prompt builder that fits history, sources and question in the window.

The default model is SmolLM2-135M (2048-token window), so every instruction is short: each
word of instructions is a word less of sources.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

from studyrag.backends.llm.base import ChatMessage
from studyrag.errors import ContextTooLong, InvalidChatRequest
from studyrag.retrieval.context import Source

# Chat templates wrap each message in a few special tokens (role header, end marker);
# the reply primer is the assistant header the model continues from.
MESSAGE_OVERHEAD = 4
REPLY_PRIMER = 4
# A source cut below this many characters says nothing useful; it is dropped instead.
MIN_SOURCE_CHARS = 40
# Room a question must leave in the window for one short source (its "[n] file, p. N"
# header and MIN_SOURCE_CHARS of text), or the answer could cite nothing.
MIN_SOURCE_TOKENS = 48
NO_SOURCES = "(no sources)"
# The longest template name a request may carry.
TEMPLATE_NAME_MAX_CHARS = 100

_GROUNDING = (
    "Answer using only the numbered sources in the user's message. "
    "Cite the sources you use like [1] or [2]. "
    "If the sources do not contain the answer, say you don't know."
)
DEFAULT_USER = "Sources:\n{context}\n\nQuestion: {question}"


@dataclass(frozen=True, slots=True)
class PromptTemplate:
    """A system part and a user part; {context} and {question} are filled in."""

    name: str
    system: str
    user: str = DEFAULT_USER

    def render(self, *, context: str, question: str) -> tuple[str, str]:
        """(system, user) with the placeholders replaced."""
        values = {"context": context, "question": question}
        # One pass, so a "{question}" inside a document is never substituted.
        sub = _PLACEHOLDER.sub
        return (
            sub(lambda m: values[m.group(1)], self.system),
            sub(lambda m: values[m.group(1)], self.user),
        )


_PLACEHOLDER = re.compile(r"\{(context|question)\}")

SYSTEM_DEFAULT = PromptTemplate("SYSTEM_DEFAULT", f"You are a study assistant. {_GROUNDING}")
RAG_BASIC = PromptTemplate("RAG_BASIC", f"{_GROUNDING} Be brief.")
RAG_DETAILED = PromptTemplate(
    "RAG_DETAILED",
    f"{_GROUNDING} Give a complete answer: explain each key point step by step.",
)
RAG_CONVERSATIONAL = PromptTemplate(
    "RAG_CONVERSATIONAL",
    f"{_GROUNDING} Reply in a friendly tone and take the earlier messages into account.",
)
RAG_ANALYTICAL = PromptTemplate(
    "RAG_ANALYTICAL",
    f"{_GROUNDING} Analyse: compare the sources and point out agreements, differences and gaps.",
)
RAG_CREATIVE = PromptTemplate(
    "RAG_CREATIVE",
    f"{_GROUNDING} Explain vividly with an analogy or example, but take every fact from the "
    "sources.",
)

BUILTIN_TEMPLATES: dict[str, PromptTemplate] = {
    t.name: t
    for t in (
        RAG_BASIC,
        RAG_DETAILED,
        RAG_CONVERSATIONAL,
        RAG_ANALYTICAL,
        RAG_CREATIVE,
        SYSTEM_DEFAULT,
    )
}


def parse_template(name: str, text: str) -> PromptTemplate:
    """A user-defined template: 'system --- user' split on a line of three dashes.

    Without the separator, text with {question} is the user part (the system part is
    SYSTEM_DEFAULT's) and other text is the system part (the user part is the default one).
    A template that never mentions {context} gets the sources ahead of its user part.
    """
    parts = re.split(r"^\s*---\s*$", text, maxsplit=1, flags=re.MULTILINE)
    if len(parts) == 2:
        system, user = parts[0].strip(), parts[1].strip()
    elif "{question}" in text:
        system, user = SYSTEM_DEFAULT.system, text.strip()
    else:
        system, user = text.strip(), DEFAULT_USER
    if "{question}" not in system + user:
        user = f"{user}\n\nQuestion: {{question}}"
    if "{context}" not in system + user:
        user = f"Sources:\n{{context}}\n\n{user}"
    return PromptTemplate(name, system, user)


def available_templates(custom: Mapping[str, str] | None = None) -> dict[str, PromptTemplate]:
    """Built-in templates, overridden or extended by user-defined ones of the same name."""
    templates = dict(BUILTIN_TEMPLATES)
    for name, text in (custom or {}).items():
        templates[name] = parse_template(name, text)
    return templates


def get_template(name: str, custom: Mapping[str, str] | None = None) -> PromptTemplate:
    """The named template, or InvalidChatRequest (CHAT_006) listing the known names."""
    templates = available_templates(custom)
    return templates[check_template_name(name, templates)]


def check_template_name(
    name: object, templates: Collection[str] | None, *, field: str = "template"
) -> str:
    """`name` if it names one of `templates`; else InvalidChatRequest (CHAT_006).

    With `templates` None (no chat model, so no names known) only the type is checked.
    """
    names = sorted(templates) if templates is not None else []
    if not isinstance(name, str):
        raise InvalidChatRequest(
            "The template must be a template's name.",
            details={"field": field, "available": names},
            hint=f"Use one of: {', '.join(names)}." if names else "Send a string.",
        )
    if templates is not None and name not in templates:
        shown = name[:TEMPLATE_NAME_MAX_CHARS]
        raise InvalidChatRequest(
            f"Unknown prompt template {shown!r}.",
            details={"template": shown, "available": names},
            hint=f"Use one of: {', '.join(names)}.",
        )
    return name


def render_context(sources: Sequence[Source]) -> str:
    """The numbered source blocks, in the layout build_context produces."""
    if not sources:
        return NO_SOURCES
    return "\n\n".join(f"[{s.index}] {s.label()}\n{s.text}" for s in sources)


@dataclass(slots=True)
class PromptFit:
    """A prompt that fits the window, and what had to go to make it fit."""

    messages: list[ChatMessage]
    sources: list[Source]
    prompt_tokens: int
    history_used: int
    history_dropped: int = 0
    sources_dropped: list[int] = field(default_factory=list)
    truncated_source: int | None = None


def question_room(
    template: PromptTemplate,
    *,
    count_tokens: Callable[[str], int],
    context_window: int,
    max_tokens: int,
) -> int:
    """Tokens a question may take so the prompt still fits one short source and the answer."""
    system, user = template.render(context="", question="")
    fixed = (count_tokens(system) + MESSAGE_OVERHEAD if system else 0) + count_tokens(user)
    return context_window - max_tokens - REPLY_PRIMER - MESSAGE_OVERHEAD - fixed - MIN_SOURCE_TOKENS


def clip_answer(text: str, max_tokens: int, count_tokens: Callable[[str], int]) -> str:
    """An earlier answer cut to its first `max_tokens` tokens (at a word), marked with "…"."""
    if max_tokens <= 0:
        return ""
    if count_tokens(text) <= max_tokens:
        return text
    lo, hi = 0, len(text)
    while lo < hi:  # the longest prefix within the budget
        mid = (lo + hi + 1) // 2
        if count_tokens(text[:mid]) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    head = text[:lo]
    cut = head.rsplit(" ", 1)[0] if " " in head else head
    return cut.rstrip(" ,;:") + " …"


def fit_prompt(
    template: PromptTemplate | str,
    *,
    question: str,
    context_text: str,
    history: Sequence[ChatMessage],
    count_tokens: Callable[[str], int],
    context_window: int,
    max_tokens: int,
    sources: Sequence[Source],
    answer_tokens: int | None = None,
) -> PromptFit:
    """Build the prompt, dropping oldest history, then lowest-ranked sources, until it fits.

    With `answer_tokens`, earlier assistant answers enter the prompt cut to that many
    tokens: a model that sees its whole previous answer tends to repeat it word for word.
    """
    tpl = get_template(template) if isinstance(template, str) else template
    budget = context_window - max_tokens - REPLY_PRIMER
    kept_sources = list(sources)
    kept_history = [
        ChatMessage(m.role, clip_answer(m.content, answer_tokens, count_tokens))
        if answer_tokens is not None and m.role == "assistant"
        else m
        for m in history
    ]
    dropped_sources: list[int] = []
    truncated: int | None = None

    def cost(text: str) -> int:
        return count_tokens(text) + MESSAGE_OVERHEAD

    def render(ctx: str) -> tuple[str, str, int]:
        system, user = tpl.render(context=ctx, question=question)
        return system, user, (cost(system) if system else 0) + cost(user)

    history_costs = [cost(m.content) for m in kept_history]
    system, user, fixed = render(context_text or render_context(kept_sources))
    while fixed + sum(history_costs) > budget:
        if kept_history:
            # Oldest first; a history that starts with an assistant turn confuses chat templates.
            kept_history.pop(0)
            history_costs.pop(0)
            while kept_history and kept_history[0].role != "user":
                kept_history.pop(0)
                history_costs.pop(0)
            continue
        if len(kept_sources) > 1:
            dropped_sources.append(kept_sources.pop().index)
        elif kept_sources and truncated is None:
            cut = _cut_source(kept_sources[0], budget, render)
            if cut is None:
                dropped_sources.append(kept_sources.pop().index)
            else:
                kept_sources[0], truncated = cut, cut.index
        elif kept_sources:
            dropped_sources.append(kept_sources.pop().index)
        else:
            raise ContextTooLong(
                f"The question takes about {fixed} tokens, but the model reads at most "
                f"{context_window} including {max_tokens} for the answer.",
                details={"prompt_tokens": fixed, "context_window": context_window},
                hint="Shorten the question, or lower max_tokens.",
            )
        system, user, fixed = render(render_context(kept_sources))
    messages = [ChatMessage("system", system)] if system else []
    messages += kept_history
    messages.append(ChatMessage("user", user))
    return PromptFit(
        messages=messages,
        sources=kept_sources,
        prompt_tokens=fixed + sum(history_costs) + REPLY_PRIMER,
        history_used=len(kept_history),
        history_dropped=len(history) - len(kept_history),
        sources_dropped=dropped_sources,
        truncated_source=truncated,
    )


def _cut_source(
    source: Source, budget: int, render: Callable[[str], tuple[str, str, int]]
) -> Source | None:
    """The longest prefix of the source's text that fits the budget on its own, if useful."""
    lo, hi = 0, len(source.text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        trial = dataclasses.replace(source, text=source.text[:mid] + "…")
        if render(render_context([trial]))[2] <= budget:
            lo = mid
        else:
            hi = mid - 1
    if lo < MIN_SOURCE_CHARS:
        return None
    return dataclasses.replace(source, text=source.text[:lo].rstrip() + "…")


def build_prompt(
    template: PromptTemplate | str,
    *,
    question: str,
    context_text: str,
    history: Sequence[ChatMessage],
    count_tokens: Callable[[str], int],
    context_window: int,
    max_tokens: int,
    sources: Sequence[Source],
) -> list[ChatMessage]:
    """The chat messages of fit_prompt(), for callers that do not need to know what was cut."""
    return fit_prompt(
        template,
        question=question,
        context_text=context_text,
        history=history,
        count_tokens=count_tokens,
        context_window=context_window,
        max_tokens=max_tokens,
        sources=sources,
    ).messages


# --- follow-up rewriting -----------------------------------------------------------------
REWRITE_SYSTEM = (
    "Rewrite the last question as one standalone search query, replacing words like "
    "'it' or 'that' with what they refer to. Reply with the query only."
)
REWRITE_TURNS = 4
REWRITE_CLIP = 300
_PREFIX = re.compile(r"^\s*(standalone\s+)?(search\s+)?(query|question)\s*:\s*", re.IGNORECASE)


def rewrite_prompt(history: Sequence[ChatMessage], question: str) -> list[ChatMessage]:
    """Messages asking the model for a standalone version of a follow-up question."""
    lines = []
    for m in list(history)[-REWRITE_TURNS:]:
        text = " ".join(m.content.split())
        if len(text) > REWRITE_CLIP:
            text = text[:REWRITE_CLIP].rsplit(" ", 1)[0] + "…"
        lines.append(f"{'User' if m.role == 'user' else 'Assistant'}: {text}")
    user = "Conversation:\n" + "\n".join(lines) + f"\n\nLast question: {question}"
    return [ChatMessage("system", REWRITE_SYSTEM), ChatMessage("user", user)]


def parse_rewrite(text: str, fallback: str, *, max_chars: int = 300) -> str:
    """The query in a rewrite answer, or `fallback` when the answer is empty or rambling."""
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    line = _PREFIX.sub("", line).strip().strip("\"'`").strip()
    if not line or len(line) > max(max_chars, 2 * len(fallback)):
        return fallback
    return line
