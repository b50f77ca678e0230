"""Prompt echo removed from answers: question lines, source headers, role tags."""

from __future__ import annotations

from studyrag.chat.echo import EchoFilter, strip_echo

LABELS = ["biology.pdf, p. 2", "notes.md, Photosynthesis"]


def test_a_leading_question_and_answer_prefix_go() -> None:
    text = "Question: What does chlorophyll absorb?\nAnswer: Red and blue light [1]."
    clean, removed = strip_echo(text, LABELS)
    assert clean == "Red and blue light [1]."
    assert removed == ["question", "answer_prefix"]


def test_source_headers_and_an_imagined_next_question_go() -> None:
    text = (
        "Red and blue light [1].\n\nSources:\n[1] biology.pdf, p. 2\n[2] notes.md, "
        "Photosynthesis\n\nQuestion: What is ATP?\nATP is energy."
    )
    clean, removed = strip_echo(text, LABELS)
    assert clean == "Red and blue light [1]."
    assert {"header", "source_header", "question"} <= set(removed)


def test_role_tags_go_and_plain_answers_stay() -> None:
    assert strip_echo("<|im_start|>assistant\nGreen [1].<|im_end|>")[0] == "Green [1]."
    plain = "Answering this: the cell wall is made of cellulose [2]. See [1] for more."
    assert strip_echo(plain, LABELS) == (plain, [])
    code = "Use `args[0] = &ffi_type_pointer;` here.\n[1] is the first element."
    assert strip_echo(code, LABELS)[0] == code


def feed_all(pieces: list[str]) -> str:
    echo = EchoFilter()
    return "".join(echo.feed(p) for p in pieces) + echo.flush()


def test_the_stream_drops_a_leading_header_and_passes_the_rest() -> None:
    assert feed_all(["Quest", "ion: what?", "\n", "Red", " light"]) == "Red light"
    assert feed_all(["Answer", ": ", "Red", " light"]) == "Red light"
    assert feed_all(["A", " leaf", " is", " green"]) == "A leaf is green"
    # Only the first piece of an ordinary answer can be held, and only while ambiguous.
    echo = EchoFilter()
    assert echo.feed("The") == "The" and echo.feed(" cell") == " cell"
