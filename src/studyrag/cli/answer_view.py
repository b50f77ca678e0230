"""How an answer appears in the terminal: live while it streams, then as it was stored.

The stored answer can differ from the streamed tokens: the server moves, adds or removes
citation markers, cuts a loop and drops an echoed prompt header. On a terminal the streamed
text is redrawn in place as the stored one, with the sentences no passage supports dimmed;
into a pipe or a file only the stored answer is written, so scripts get the clean text.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

UNVERIFIED_STYLE = "dim italic"
LEGEND = "dimmed: not found in the sources"


def final_text(done: dict[str, Any], *, prefix: str = "") -> Text:
    """The stored answer, its unsupported sentences dimmed (offsets from attribution)."""
    message = done.get("message") or {}
    content = str(message.get("content") or "")
    text = _prefixed(prefix, content)
    unverified = 0
    for sentence in _sentences(done):
        if sentence.get("supported"):
            continue
        start, end = int(sentence.get("start", 0)), int(sentence.get("end", 0))
        if 0 <= start < end <= len(content):
            text.stylize(UNVERIFIED_STYLE, len(prefix) + start, len(prefix) + end)
            unverified += 1
    if unverified:
        text.append(f"\n({LEGEND})", style="dim")
    return text


def _prefixed(prefix: str, content: str) -> Text:
    text = Text(prefix + content)
    text.stylize("bold blue", 0, len(prefix))
    return text


def _sentences(done: dict[str, Any]) -> list[dict[str, Any]]:
    for meta in ((done.get("message") or {}).get("metadata") or {}, done.get("metadata") or {}):
        attribution = meta.get("attribution") if isinstance(meta, dict) else None
        if isinstance(attribution, dict) and isinstance(attribution.get("sentences"), list):
            return [s for s in attribution["sentences"] if isinstance(s, dict)]
    return []


class AnswerView:
    """Feed it the streamed pieces, then the final `done` event."""

    def __init__(self, console: Console, *, prefix: str = "") -> None:
        self.console = console
        self.prefix = prefix
        self.streamed = ""
        self._live: Live | None = None

    def __enter__(self) -> AnswerView:
        if self.console.is_terminal:
            self._live = Live(
                _prefixed(self.prefix, ""),
                console=self.console,
                auto_refresh=True,
                refresh_per_second=12,
                vertical_overflow="visible",
                transient=False,
            )
            self._live.start()
        return self

    def feed(self, delta: str) -> None:
        self.streamed += delta
        if self._live is not None:
            self._live.update(_prefixed(self.prefix, self.streamed))

    def finish(self, done: dict[str, Any]) -> None:
        """Show the stored answer in place of what streamed."""
        final = final_text(done, prefix=self.prefix)
        if self._live is not None:
            self._live.update(final, refresh=True)
            self._live.stop()
            self._live = None
        else:
            self.console.print(final, highlight=False, soft_wrap=True)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Stopped early (an error, Ctrl-C): what streamed stays on screen as it was.
        if self._live is not None:
            self._live.stop()
            self._live = None
        elif self.streamed and kind is not None:
            self.console.print(_prefixed(self.prefix, self.streamed), highlight=False)
