"""Citations the server checks, on crafted answers, scored by the real MiniLM embedder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from studyrag.backends.embeddings.base import Embedder
from studyrag.backends.llm.fake import FakeChatModel
from studyrag.chat.attribution import (
    FALLBACK_HEADING,
    SUPPORT_THRESHOLD,
    Attribution,
    attribute,
    split_sentences,
)
from studyrag.chat.citations import find_markers
from studyrag.chat.engine import DoneEvent, TokenEvent
from studyrag.config import ChatSettings, Settings
from studyrag.retrieval.context import Source
from studyrag.services import open_services

# One "document" per source; each chunk is a slice of its document's text, as in the store.
DOCUMENTS = {
    "bio": (
        "# Plant Biology Notes\n\nPhotosynthesis happens in the chloroplasts of plant cells. "
        "Chlorophyll absorbs blue and red\nlight and reflects green light, which is why leaves "
        "look green. The plant turns carbon dioxide and water into glucose and releases oxygen."
    ),
    "history": (
        "# European History\n\nThe French Revolution began in 1789 with the storming of the "
        "Bastille in Paris. It ended the absolute monarchy of Louis XVI. Napoleon Bonaparte "
        "seized power in 1799."
    ),
    "chem": (
        "Intro line.\n\nWater boils at 100 degrees Celsius at sea level. Table salt is sodium "
        "chloride, a compound of sodium and chlorine. Its formula is NaCl."
    ),
}


def _source(index: int, doc: str, *, skip: int) -> Source:
    content = DOCUMENTS[doc]
    return Source(
        index=index,
        document_id=doc,
        filename=f"{doc}.md",
        page=None,
        section="",
        chunk_id=index,
        score=1.0,
        text=content[skip:],
        start=skip,
        end=len(content),
    )


SOURCES = [
    _source(1, "bio", skip=len("# Plant Biology Notes\n\n")),
    _source(2, "history", skip=len("# European History\n\n")),
    _source(3, "chem", skip=0),
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
async def embedder(minilm: Embedder) -> Embedder:
    await minilm.start()
    return minilm


async def check(answer: str, embedder: Embedder, **kwargs: Any) -> Attribution:
    """Attribute `answer` and assert what holds for every answer."""
    result = await attribute(answer, SOURCES, embedder=embedder, **kwargs)
    meta = result.meta
    assert meta["total"] == len(meta["sentences"])
    assert meta["supported"] == sum(s["supported"] for s in meta["sentences"])
    in_text: set[int] = set()
    for sentence in meta["sentences"]:
        piece = result.content[sentence["start"] : sentence["end"]]
        markers = [n for m in find_markers(piece) for n in m.numbers]
        assert markers == sentence["sources"], (piece, sentence)
        assert sentence["supported"] == bool(sentence["sources"])
        assert sentence["supported"] == (sentence["support"] >= SUPPORT_THRESHOLD)
        in_text.update(markers)
    for source in result.sources:
        assert "text" not in source
        if source["cited"]:
            quote = source["quote"]
            doc = DOCUMENTS[source["document_id"]]
            assert doc[quote["start"] : quote["end"]] == quote["text"]
            assert 0.0 <= source["support"] <= 1.0
        else:
            assert source["quote"] is None and source["support"] is None
    assert result.cited == [s["index"] for s in result.sources if s["cited"]]
    if not meta["fallback"]:
        assert set(result.cited) == in_text
    return result


def _source_of(result: Attribution, index: int) -> dict[str, Any]:
    return next(s for s in result.sources if s["index"] == index)


async def test_a_sentence_quoting_source_2_but_citing_1_is_moved_to_2(embedder: Embedder) -> None:
    answer = "The French Revolution began in 1789 with the storming of the Bastille [1]."
    result = await check(answer, embedder)
    assert result.content == (
        "The French Revolution began in 1789 with the storming of the Bastille [2]."
    )
    (sentence,) = result.meta["sentences"]
    assert sentence["supported"] and sentence["sources"] == [2]
    assert {"sentence": 0, "action": "moved", "marker": 1, "to": 2} in result.meta["changes"]
    quote = _source_of(result, 2)["quote"]
    assert quote["text"].startswith("The French Revolution began in 1789")
    assert not _source_of(result, 1)["cited"]


async def test_a_number_that_is_in_no_source_is_unsupported(embedder: Embedder) -> None:
    answer = (
        "Chlorophyll absorbs blue and red light [1]. "
        "The French Revolution began in 1812 with the storming of the Bastille [2]."
    )
    result = await check(answer, embedder)
    first, second = result.meta["sentences"]
    assert first["supported"] and first["sources"] == [1]
    assert not second["supported"] and second["support"] < SUPPORT_THRESHOLD
    # Its marker is gone: every marker left in the answer is one the server checked.
    assert result.content == (
        "Chlorophyll absorbs blue and red light [1]. "
        "The French Revolution began in 1812 with the storming of the Bastille."
    )
    assert not _source_of(result, 2)["cited"]
    # The same sentence with the right year is supported by source 2.
    right = await check(answer.replace("1812", "1789"), embedder)
    assert right.meta["supported"] == 2


async def test_a_name_that_is_in_no_source_is_unsupported(embedder: Embedder) -> None:
    # A sentence's first word is not taken for a name (any sentence starts with a capital).
    answer = "In 1799, Napoleon Bonaparte seized power [2]. In 1799, Charlemagne seized power [2]."
    result = await check(answer, embedder, fallback=False)
    assert [s["supported"] for s in result.meta["sentences"]] == [True, False]


async def test_a_marker_past_the_source_count_is_removed(embedder: Embedder) -> None:
    answer = "Water boils at 100 degrees Celsius at sea level [7]. I enjoy long walks [9]."
    result = await check(answer, embedder)
    assert "[7]" not in result.content and "[9]" not in result.content
    # The supported sentence gets the source that supports it instead.
    assert result.content == (
        "Water boils at 100 degrees Celsius at sea level [3]. I enjoy long walks."
    )
    changes = result.meta["changes"]
    assert {"sentence": 0, "action": "moved", "marker": 7, "to": 3} in changes
    assert {"sentence": 1, "action": "removed", "marker": 9} in changes


async def test_a_supported_sentence_without_a_marker_gets_one(embedder: Embedder) -> None:
    answer = "Leaves look green because chlorophyll reflects green light. Salt is NaCl."
    result = await check(answer, embedder)
    assert result.content == (
        "Leaves look green because chlorophyll reflects green light [1]. Salt is NaCl [3]."
    )
    assert result.meta["supported"] == result.meta["total"] == 2
    assert {"sentence": 0, "action": "added", "marker": 1} in result.meta["changes"]
    quote = _source_of(result, 1)["quote"]
    assert "reflects green light" in quote["text"]
    # The quote is the supporting sentence, not the whole chunk.
    assert len(quote["text"]) < len(SOURCES[0].text)


async def test_a_correct_marker_is_kept_as_written(embedder: Embedder) -> None:
    answer = "Chlorophyll absorbs blue and red light [Source 1]."
    result = await check(answer, embedder)
    assert result.content == answer
    assert result.meta["changes"] == []


async def test_nothing_supported_appends_the_best_quote(embedder: Embedder) -> None:
    answer = "I am not sure, but it may have been a long time ago."
    result = await check(answer, embedder, question="When did the French Revolution begin?")
    meta = result.meta
    assert meta["fallback"] is True and meta["supported"] == 0
    assert result.content.startswith(answer + "\n\n" + FALLBACK_HEADING + "\n> ")
    assert result.cited[0] == 2
    quote = _source_of(result, 2)["quote"]
    assert "1789" in quote["text"]
    # The quote is shown as a blockquote with its marker, word for word.
    block = result.content.split(FALLBACK_HEADING + "\n", 1)[1]
    shown = " ".join(line.removeprefix("> ").strip() for line in block.splitlines())
    assert " ".join(quote["text"].split()) + " [2]" in shown
    # Without it (a stopped answer), nothing is appended.
    plain = await check(answer, embedder, question="When?", fallback=False)
    assert plain.content == answer and plain.meta["fallback"] is False


async def test_code_is_never_rewritten(embedder: Embedder) -> None:
    answer = (
        "Set the first argument with `args[0] = &ffi_type_pointer;` in C.\n\n"
        "```c\nargs[0] = &ffi_type_pointer;\nx[1] = 2; /* see [1]. Then [2] */\n```\n"
        "Chlorophyll absorbs blue and red light [2]."
    )
    result = await check(answer, embedder)
    assert "`args[0] = &ffi_type_pointer;`" in result.content
    assert "```c\nargs[0] = &ffi_type_pointer;\nx[1] = 2; /* see [1]. Then [2] */\n```" in (
        result.content
    )
    assert result.content.endswith("Chlorophyll absorbs blue and red light [1].")
    # The code block is not a sentence.
    pieces = [result.content[s["start"] : s["end"]] for s in result.meta["sentences"]]
    assert not any("x[1] = 2" in p for p in pieces)


def test_sentences_split_where_sentences_end() -> None:
    text = (
        "Growth was 3.5 percent in 2019, e.g. in Europe. Apple Inc. reported more [1]. "
        "Then it fell. [2] Dr. J. Smith agreed!\n\n1. First item.\n2. Second `a. B` item\n"
        "```\nx = 1. Y\n```\nAfter code."
    )
    assert [text[a:b] for a, b in split_sentences(text)] == [
        "Growth was 3.5 percent in 2019, e.g. in Europe.",
        "Apple Inc. reported more [1].",
        "Then it fell. [2]",
        "Dr. J. Smith agreed!",
        "1. First item.",
        "2. Second `a. B` item",
        "After code.",
    ]


NOTES = """# Photosynthesis

Photosynthesis converts light energy into chemical energy. Chlorophyll in the
chloroplasts absorbs red and blue light and reflects green light.

## Calvin cycle

The Calvin cycle fixes carbon dioxide into sugar in the stroma, using ATP and NADPH.
"""


@pytest.mark.parametrize("on", [True, False])
async def test_the_engine_checks_citations_at_the_final_save(
    tmp_path: Path, minilm: Embedder, on: bool
) -> None:
    """Real services and MiniLM; the chat model is the fake (it is the layer above it)."""
    reply = ["Chlorophyll", " absorbs", " red", " and", " blue", " light", "."]
    reply += [" It", " reflects", " green", " light", " [9]", "."]
    settings = Settings(data_dir=tmp_path / "data", chat=ChatSettings(attribution=on))
    model = FakeChatModel(reply)
    async with open_services(settings, with_chat=True, chat_model=model, embedder=minilm) as svc:
        path = tmp_path / "photosynthesis.md"
        path.write_text(NOTES, encoding="utf-8")
        assert (await svc.pipeline.ingest_file(path)).status == "completed"
        assert svc.chat is not None
        events = [e async for e in svc.chat.stream_message("What does chlorophyll absorb?")]
        tokens = "".join(e.delta for e in events if isinstance(e, TokenEvent))
        done = events[-1]
        assert isinstance(done, DoneEvent)
        assert tokens == "".join(reply)  # what was streamed is untouched
        message, meta = done.message, done.metadata
        if not on:
            assert (
                message["content"]
                == "Chlorophyll absorbs red and blue light. It reflects green light."
            )
            assert "attribution" not in meta and "quote" not in message["sources"][0]
            return
        assert message["content"] == (
            "Chlorophyll absorbs red and blue light [1]. It reflects green light [1]."
        )
        attribution = meta["attribution"]
        assert (attribution["supported"], attribution["total"]) == (2, 2)
        assert meta["cited"] == [1] and meta["attribution_ms"] > 0
        quote = message["sources"][0]["quote"]
        content = await svc.documents.get_content(message["sources"][0]["document_id"])
        assert content[quote["start"] : quote["end"]] == quote["text"]
        assert "absorbs red and blue light" in quote["text"]
        stored = await svc.conversations.list_messages(done.conversation["id"])
        assert stored.items[1].content == message["content"]
        assert stored.items[1].metadata["attribution"] == attribution


async def test_questions_and_leading_markers_claim_nothing(embedder: Embedder) -> None:
    answer = (
        "[2] Why do leaves look green? [1]\n\nWater boils at 100 degrees Celsius at sea level [2]."
    )
    result = await check(answer, embedder)
    assert result.content == (
        "Why do leaves look green?\n\nWater boils at 100 degrees Celsius at sea level [3]."
    )
    assert result.meta["total"] == 1 and result.meta["supported"] == 1


async def test_a_supported_answer_to_another_question_also_gets_the_closest_quote(
    embedder: Embedder,
) -> None:
    # A small model often repeats a true sentence of the wrong passage: supported, but it
    # does not answer. The passage closest to the question, uncited, is shown as a quote.
    answer = "Leaves look green because chlorophyll reflects green light [1]."
    result = await check(answer, embedder, question="When did the French Revolution begin?")
    meta = result.meta
    assert meta["supported"] == 1 and meta["fallback"] is True
    assert meta["fallback_reason"] == "off_topic"
    assert result.content.startswith(answer + "\n\n" + FALLBACK_HEADING + "\n> ")
    assert result.cited[:2] == [1, 2]
    assert "1789" in _source_of(result, 2)["quote"]["text"]
    # The answer's own sentence keeps its checked citation and quote.
    assert "reflects green light" in _source_of(result, 1)["quote"]["text"]
    # The same answer to the question it does answer gets nothing added.
    on_topic = await check(answer, embedder, question="Why are leaves green?")
    assert on_topic.content == answer and on_topic.meta["fallback"] is False
    assert on_topic.meta["fallback_reason"] is None
