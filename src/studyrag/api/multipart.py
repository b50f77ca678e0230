"""Streaming multipart/form-data: file parts read as the body arrives, never spooled.

Starlette's `request.form()` writes every file part whole to an anonymous temp file in the
system temp directory before a route sees it, so a size limit could only be checked after
the whole body was on disk. Here the body is pushed through python-multipart's streaming
parser chunk by chunk and each file part is handed over as an async iterator of its bytes:
the route stores them where they belong (OriginalStore's .incoming/ in the data directory)
and its limit stops the body mid-stream. Nothing is written anywhere else.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from studyrag.errors import StudyRAGError


def multipart_openapi(field: str, *, many: bool) -> dict[str, Any]:
    """`openapi_extra` declaring a multipart body with file field(s) `field`."""
    item = {"type": "string", "format": "binary"}
    schema = {"type": "array", "items": item} if many else item
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {field: schema},
                        "required": [field],
                    }
                }
            },
        }
    }


@dataclass(slots=True)
class FilePart:
    """One file of the form: its field name, its filename and its bytes as they arrive."""

    field: str
    filename: str
    chunks: AsyncIterator[bytes]


class _Events:
    """Parser callbacks collected as (kind, bytes) events, drained after each write."""

    def __init__(self) -> None:
        self.queue: deque[tuple[str, bytes]] = deque()

    def callbacks(self) -> dict[str, Any]:
        q = self.queue

        def data(kind: str) -> Any:
            return lambda buf, start, end: q.append((kind, bytes(buf[start:end])))

        def mark(kind: str) -> Any:
            return lambda: q.append((kind, b""))

        return {
            "on_part_begin": mark("begin"),
            "on_part_data": data("data"),
            "on_part_end": mark("end"),
            "on_header_field": data("hfield"),
            "on_header_value": data("hvalue"),
            "on_header_end": mark("hend"),
            "on_headers_finished": mark("headers"),
            "on_end": mark("done"),
        }


async def file_parts(
    request: Request, *, field: str, invalid: type[StudyRAGError], max_files: int
) -> AsyncGenerator[FilePart, None]:
    """The form's file parts under `field`, in order; each is read (or abandoned) before
    the next.

    `invalid` is raised for a body that is not multipart/form-data or is malformed, and for
    more than `max_files` file parts. Other fields, and fields that are not files, are skipped.
    """
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise invalid(
            "The upload must be a multipart/form-data body.",
            hint="Send the files as a form (curl -F files=@notes.pdf).",
        )
    events = _Events()
    parser = MultipartParser(boundary, cast(Any, events.callbacks()))
    body = request.stream()
    state = {"ended": False}

    async def next_event() -> tuple[str, bytes]:
        while not events.queue:
            if state["ended"]:
                raise invalid("The multipart body ended in the middle of a part.")
            try:
                chunk = await body.__anext__()
            except StopAsyncIteration:
                state["ended"] = True
                parser.finalize()
                continue
            except ClientDisconnect as exc:
                raise invalid("The client went away during the upload.") from exc
            try:
                parser.write(chunk)
            except MultipartParseError as exc:
                raise invalid(f"The multipart body is malformed: {exc}.") from exc
        return events.queue.popleft()

    async def part_data() -> AsyncIterator[bytes]:
        while True:
            kind, data = await next_event()
            if kind == "end":
                return
            if kind == "data" and data:
                yield data

    files = 0
    while True:
        kind, _ = await next_event()
        if kind == "done":
            return
        if kind != "begin":
            continue
        headers: dict[bytes, bytes] = {}
        hname, value = b"", b""
        while (kind_data := await next_event())[0] != "headers":
            kind, data = kind_data
            if kind == "hfield":
                hname += data
            elif kind == "hvalue":
                value += data
            elif kind == "hend":
                headers[hname.lower()] = value
                hname, value = b"", b""
        _, options = parse_options_header(headers.get(b"content-disposition", b""))
        chunks = part_data()
        if b"filename" not in options or options.get(b"name", b"") != field.encode():
            async for _ in chunks:  # a plain field: skipped
                pass
            continue
        files += 1
        if files > max_files:
            raise invalid(
                f"At most {max_files} files per upload.", hint="Upload them in several requests."
            )
        name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options[b"filename"].decode("utf-8", "replace")
        yield FilePart(name, filename, chunks)
        # Whatever of this part the consumer left unread is skipped, not stored. (A consumer
        # that stops altogether, e.g. on a 413, closes this generator: the rest is not read.)
        async for _ in chunks:
            pass
