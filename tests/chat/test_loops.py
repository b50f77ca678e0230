"""Loop detection on crafted answers: what counts as a repetition and where it is cut."""

from __future__ import annotations

from studyrag.chat.loops import RepetitionGuard, copies_previous, find_loop, trim_loop

SENTENCE = "Chlorophyll absorbs red and blue light and reflects green light [1]."


def test_a_repeated_sentence_is_cut_after_its_first_copy() -> None:
    text = f"{SENTENCE} It lives in chloroplasts. {SENTENCE} It lives in chloroplasts."
    trimmed, loop = trim_loop(text)
    assert trimmed == f"{SENTENCE} It lives in chloroplasts."
    assert loop is not None and loop.kind in ("sentence", "ngram")


def test_markers_and_case_do_not_hide_a_loop() -> None:
    text = "The revenue was $5 billion [1]. the revenue was $5 billion [2]."
    assert trim_loop(text)[0] == "The revenue was $5 billion [1]."


def test_a_run_of_one_word_or_a_short_phrase_is_a_loop() -> None:
    assert trim_loop("It is very " + "very " * 14)[0] == "It is very"
    phrase = "and then the "
    trimmed, loop = trim_loop("First " + phrase * 5)
    assert trimmed == "First and then the" and loop is not None and loop.kind == "ngram"


def test_a_loop_that_starts_mid_sentence_is_cut_at_the_sentence() -> None:
    unit = "Paris is the capital of France, a city on the Seine river. "
    assert trim_loop(unit * 2 + "Paris is the")[0] == unit.strip()


def test_ordinary_answers_are_left_alone() -> None:
    for text in (
        "The revenue in fiscal 2022 was $5 billion. The revenue in fiscal 2021 was $4 billion.",
        "No, no, no. It is not. Yes. Yes.",
        "- Revenue: $5 billion\n- Net income: $1 billion\n- Revenue growth: 12%",
        "He said that that was that.",
    ):
        assert find_loop(text) is None, text


def test_streaming_stops_as_soon_as_a_long_sentence_starts_again() -> None:
    guard = RepetitionGuard()
    pieces = (SENTENCE + " " + SENTENCE).split(" ")
    for i, word in enumerate(pieces):
        loop = guard.feed(word if i == 0 else " " + word)
        if loop is not None:
            break
    assert loop is not None
    # Stopped 10 words into the second copy, not at its end.
    assert i < len(pieces) - 1
    assert guard.text[: loop.start].strip() == SENTENCE


def test_an_answer_that_starts_like_an_earlier_one_is_a_copy() -> None:
    guard = RepetitionGuard(previous=[SENTENCE])
    loop = None
    for word in SENTENCE.split(" "):
        loop = loop or guard.feed(word + " ")
    assert loop is not None and loop.kind == "history" and loop.start == 0
    assert copies_previous(SENTENCE.replace("[1]", "[2]"), [SENTENCE])
    assert not copies_previous("Green light is reflected by the leaves.", [SENTENCE])
