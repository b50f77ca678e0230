"""The rules of /v1/chat/completions: which notebook a model names, which message is the
question, and which conversation the answer is stored in.

A request is one turn. Its last message (a user message) is the question; the messages
before it are the history. Without `conversation_id`, each request gets a fresh
conversation in the notebook, holding the request's history (user and assistant messages;
system messages are left out: the notebook's prompt template is the system prompt), so
follow-up rewriting and the prompt see what the client showed. With `conversation_id` the
stored conversation continues and the request's history is not stored again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from studyrag.chat.conversations import ConversationManager
from studyrag.db.models import Notebook
from studyrag.errors import InvalidChatRequest, NotebookNotFound
from studyrag.schemas.openai import MODEL_PREFIX, ChatMessageIn

# Kept on conversations made by /v1, so a user can tell (and clean up) where they came from.
SOURCE = "openai-api"


@dataclass(frozen=True, slots=True)
class Turn:
    question: str
    history: list[tuple[str, str]]  # (user | assistant, text), oldest first


def text_of(message: ChatMessageIn, index: int) -> str:
    """A message's text; content parts other than text are refused."""
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for part in content:
        if part.type != "text" or part.text is None:
            raise InvalidChatRequest(
                f"messages[{index}] has a content part of type {part.type!r}; only text is read.",
                details={"param": f"messages.{index}.content"},
                hint='Send the message\'s text as a string or as {"type": "text"} parts.',
            )
        texts.append(part.text)
    return "\n".join(texts)


def split_turn(messages: list[ChatMessageIn]) -> Turn:
    """The question (the last message, which must be the user's) and the history before it."""
    last = messages[-1]
    if last.role != "user":
        raise InvalidChatRequest(
            f"The last message is the {last.role}'s; it must be the user's question.",
            details={"param": "messages"},
            hint='End `messages` with {"role": "user", "content": "your question"}.',
        )
    history: list[tuple[str, str]] = [
        (str(m.role), text)
        for i, m in enumerate(messages[:-1])
        if m.role in ("user", "assistant") and (text := text_of(m, i).strip())
    ]
    return Turn(question=text_of(last, len(messages) - 1), history=history)


async def notebook_of_model(find: Callable[[str], Awaitable[Notebook]], model: str) -> Notebook:
    """The notebook a model id names: `studyrag/<name>` (or its id, or an id prefix), looked
    up by `find` (among the notebooks the caller sees: `Access.find_notebook`)."""
    ref = model[len(MODEL_PREFIX) :] if model.startswith(MODEL_PREFIX) else ""
    if not ref.strip():
        raise NotebookNotFound(
            f"The model {model!r} does not exist: StudyRAG's models are its notebooks, "
            f"named {MODEL_PREFIX}<notebook>.",
            details={"param": "model"},
            hint="GET /v1/models lists them.",
        )
    try:
        return await find(ref)
    except NotebookNotFound as exc:
        raise NotebookNotFound(
            f"The model {model!r} does not exist: no notebook is called {ref!r}.",
            details={"param": "model"},
            hint="GET /v1/models lists them.",
        ) from exc


async def conversation_for(
    conversations: ConversationManager,
    *,
    notebook_id: str,
    turn: Turn,
    conversation_id: str | None,
) -> str:
    """The conversation the answer goes to: the one named (checked), or a fresh one that
    holds the request's history."""
    if conversation_id is not None:
        await conversations.scope(conversation_id, notebook_id)  # CHAT_006 if elsewhere
        await conversations.get(conversation_id)  # CHAT_005 if unknown or deleted
        return conversation_id
    conversation = await conversations.create(metadata={"source": SOURCE}, notebook_id=notebook_id)
    for role, text in turn.history:
        await conversations.add_message(conversation.id, role, text)
    return conversation.id
