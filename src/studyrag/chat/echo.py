"""Prompt echo: the parts of a prompt a small model copies into its answer, removed.

The user part of every prompt is "Sources:\\n[1] file.pdf, p. 2\\n…\\n\\nQuestion: …"
(chat/prompts.py). Models continue that pattern: they open with "Question: …" or "Answer:",
list "[1] file.pdf, p. 2" headers, or, done answering, write the next "Question:" of an
imagined exam. Chat-template role tags ("<|im_start|>assistant", "<end_of_turn>") leak the
same way. None of it is the answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# Stop strings for the model: a new prompt section on its own line ends the answer there,
# before it reaches the screen. (At the very start the cleaner below removes them.)
ECHO_STOPS = ["\nQuestion:", "\nSources:", "\nUser:", "<|im_end|>", "<end_of_turn>"]

_ROLE_TAG = re.compile(
    r"<\|(?:im_start|im_end|endoftext|eot_id|start_header_id|end_header_id|assistant|user|"
    r"system)\|>(?:\s*(?:system|user|assistant)\b)?|<(?:start|end)_of_turn>(?:\s*(?:model|user)\b)?",
    re.IGNORECASE,
)
# A prompt header line: "Question: …", "Sources:", "Source 2:", "Context:", a role name.
_QUESTION_LINE = re.compile(r"^[ \t]*(?:#+[ \t]*)?\**(?:question|query)\**[ \t]*:", re.IGNORECASE)
_SOURCES_LINE = re.compile(
    r"^[ \t]*(?:#+[ \t]*)?\**(?:sources?|context|documents?)\**[ \t]*:?[ \t]*\**[ \t]*$",
    re.IGNORECASE,
)
_ROLE_LINE = re.compile(r"^[ \t]*(?:system|user|assistant)[ \t]*:?[ \t]*$", re.IGNORECASE)
# What the model writes before its answer: "Answer:", "Assistant:", "A:".
_ANSWER_PREFIX = re.compile(
    r"^[ \t]*(?:#+[ \t]*)?\**(?:answer|assistant|response|a)\**[ \t]*:[ \t]*", re.IGNORECASE
)
# A source header as render_context writes it: "[2] report.pdf, p. 4, Intro".
_FILE_HEADER = re.compile(
    r"^[ \t]*(?:[-*][ \t]*)?\[\d{1,4}\][ \t]*\S[^\n]*?"
    r"\.(?:pdf|docx?|txt|md|markdown|html?|png|jpe?g)\b(?:,[ \t]*p\.[ \t]*\d+)?[^\n.!?]*$",
    re.IGNORECASE,
)


def strip_echo(text: str, labels: Sequence[str] = ()) -> tuple[str, list[str]]:
    """(answer without prompt echo, what kinds were removed).

    `labels` are the sources' labels ("file.pdf, p. 2"), so a header is recognised whatever
    the file type. Text after an echoed "Question:" line that follows the answer is the
    model's imagined next turn and goes too; a leading one is only the question repeated.
    """
    removed: list[str] = []
    if _ROLE_TAG.search(text):
        text = _ROLE_TAG.sub("", text)
        removed.append("role_tag")
    headers = {f"[{i}] {label}".casefold() for i, label in enumerate(labels, start=1)}
    kept: list[str] = []
    started = False  # some answer text has been kept
    for line in text.split("\n"):
        bare = line.strip()
        if _QUESTION_LINE.match(line):
            removed.append("question")
            if started:
                break  # the model goes on to an imagined next question
            continue
        if _SOURCES_LINE.match(line) or _ROLE_LINE.match(line):
            removed.append("header")
            continue
        if bare and (_FILE_HEADER.match(line) or _is_label(bare, headers)):
            removed.append("source_header")
            continue
        if not started and bare:
            cut = _ANSWER_PREFIX.sub("", line, count=1)
            if cut != line:
                removed.append("answer_prefix")
                line = cut
                if not line.strip():
                    continue
        if bare:
            started = True
        kept.append(line)
    clean = "\n".join(kept).strip()
    clean = re.sub(r"\n{3,}", "\n\n", clean)
    return clean, list(dict.fromkeys(removed))


def _is_label(line: str, headers: set[str]) -> bool:
    folded = line.casefold().lstrip("-* ")
    return folded in headers


# How an echoed header can open a streamed answer: a whole line to drop, or a prefix.
_HEAD_DROP_LINE = (
    "question:",
    "query:",
    "sources:",
    "source:",
    "context:",
    "<|im_start|>",
    "<start_of_turn>",
)
_HEAD_DROP_PREFIX = ("answer:", "assistant:", "response:")


class EchoFilter:
    """The streamed side of strip_echo: holds back only the first few characters while they
    may still be an echoed header, drops a header line or an "Answer:" prefix, then passes
    every piece through untouched (the final content is cleaned by strip_echo)."""

    def __init__(self) -> None:
        self._head = ""
        self._passing = False

    def feed(self, piece: str) -> str:
        """What of `piece` may be shown now."""
        if self._passing:
            return piece
        self._head += piece
        while not self._passing:
            head = self._head.lstrip()
            folded = head.casefold()
            line_end = head.find("\n")
            first = folded if line_end < 0 else folded[:line_end]
            if any(w.startswith(first) for w in (*_HEAD_DROP_LINE, *_HEAD_DROP_PREFIX)):
                if line_end < 0 or not first:
                    return ""  # could still be a header: wait for more
            drop = next((w for w in _HEAD_DROP_LINE if first.startswith(w)), None)
            if drop is not None:
                if line_end < 0:
                    return ""  # the header line is not over yet
                self._head = head[line_end + 1 :]
                continue
            prefix = next((w for w in _HEAD_DROP_PREFIX if first.startswith(w)), None)
            if prefix is not None:
                head = head[len(prefix) :].lstrip(" \t")
            self._passing = True
            out, self._head = head, ""
            return out
        return ""

    def flush(self) -> str:
        """What is still held back when the stream ends."""
        out, self._head = ("" if self._passing else self._head), ""
        self._passing = True
        return out
