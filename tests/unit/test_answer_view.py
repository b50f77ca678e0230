"""The terminal view of an answer: the stored text replaces the streamed one, unsupported
sentences dimmed; into a pipe only the stored answer is written."""

from __future__ import annotations

import io
import time

from rich.console import Console

from studyrag.cli.answer_view import LEGEND, UNVERIFIED_STYLE, AnswerView, final_text


def done_event(content: str, sentences: list[dict[str, object]]) -> dict[str, object]:
    return {
        "message": {"content": content, "metadata": {"attribution": {"sentences": sentences}}},
        "metadata": {},
    }


def test_unsupported_sentences_are_dimmed_and_explained() -> None:
    content = "Chlorophyll absorbs red light [1]. The moon is cheese."
    split = content.index("The moon")
    done = done_event(
        content,
        [
            {"start": 0, "end": split - 1, "supported": True},
            {"start": split, "end": len(content), "supported": False},
        ],
    )
    text = final_text(done, prefix="studyrag> ")
    assert text.plain.startswith("studyrag> " + content)
    assert text.plain.endswith(f"({LEGEND})")
    dimmed = [text.plain[s.start : s.end] for s in text.spans if str(s.style) == UNVERIFIED_STYLE]
    assert dimmed == ["The moon is cheese."]


def test_all_supported_has_no_legend_and_bad_offsets_are_ignored() -> None:
    content = "Leaves look green [1]."
    done = done_event(
        content,
        [
            {"start": 0, "end": len(content), "supported": True},
            {"start": 5, "end": 999, "supported": False},
        ],
    )
    text = final_text(done)
    assert text.plain == content
    assert not [s for s in text.spans if str(s.style) == UNVERIFIED_STYLE]


def test_a_pipe_gets_the_stored_answer_not_the_streamed_tokens() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    with AnswerView(console) as view:
        for piece in ["Answer: ", "Chlorophyll absorbs", " red light [3]."]:
            view.feed(piece)
        view.finish(done_event("Chlorophyll absorbs red light [1].", []))
    assert out.getvalue() == "Chlorophyll absorbs red light [1].\n"


def test_a_terminal_redraws_the_streamed_text_as_the_stored_answer() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200, color_system=None)
    with AnswerView(console) as view:
        view.feed("Answer: Chlorophyll absorbs red light [3].")
        time.sleep(0.5)  # the live region refreshes 12 times a second
        view.finish(done_event("Chlorophyll absorbs red light [1].", []))
    screen = out.getvalue().replace("\x1b[?25l", "").replace("\x1b[?25h", "")
    assert "Answer: Chlorophyll absorbs red light [3]." in screen  # shown while streaming
    # Then the line is erased and what is left on screen is the stored answer.
    assert screen.rsplit("\x1b[2K", 1)[1] == "Chlorophyll absorbs red light [1].\n"


def test_a_stream_stopped_by_an_error_leaves_what_streamed() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    try:
        with AnswerView(console) as view:
            view.feed("Half an ans")
            raise RuntimeError("gone")
    except RuntimeError:
        pass
    assert out.getvalue() == "Half an ans\n"
