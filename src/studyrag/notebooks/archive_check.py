"""Reading notebook archives safely: every check an import makes before it changes anything.

`check_archive` reads the whole zip once — every entry decompressed, counted, hashed and (for
JSON entries) parsed — and raises one of the archive errors (NB_005..NB_010) on the first
problem. Only an archive that passed it is restored. The reader never writes to disk and
never trusts a declared size: bytes are counted as they are inflated.
"""

from __future__ import annotations

import array
import hashlib
import json
import math
import stat
import sys
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from studyrag.config import ArchiveSettings
from studyrag.errors import (
    ArchiveBomb,
    ArchiveInvalid,
    ArchiveTooLarge,
    ArchiveTruncated,
    ArchiveUnsafe,
    ArchiveVersionUnsupported,
    InvalidNotebook,
)
from studyrag.ingest.zipsafe import ratio_exceeded
from studyrag.notebooks.service import clean_name
from studyrag.schemas.archive import (
    ENTRY_PATTERNS,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    ArchivedConversation,
    ArchivedDocument,
    ArchiveManifest,
)

M = TypeVar("M", bound=BaseModel)

BLOCK = 1 << 20
# A JSON entry is parsed in memory: one document's text and chunks, one conversation.
_MAX_JSON_ENTRY = 512 << 20
_MAX_MANIFEST = 64 << 20
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


@dataclass(frozen=True, slots=True)
class ArchiveSummary:
    """What a checked archive holds."""

    manifest: ArchiveManifest
    documents: int
    chunks: int
    conversations: int
    messages: int
    unpacked_bytes: int


def check_archive(path: Path, limits: ArchiveSettings) -> ArchiveSummary:
    """Check a whole archive; its summary, or an archive error (nothing is written)."""
    size = path.stat().st_size
    if size > limits.max_archive_bytes:
        raise ArchiveTooLarge(
            f"The archive is {size / 1e6:.1f} MB; the limit is {limits.max_archive_mb:g} MB.",
            details={"size": size, "limit": limits.max_archive_bytes},
        )
    with open_zip(path) as zf:
        return _Checker(zf, limits).run()


@contextmanager
def open_zip(path: Path) -> Iterator[zipfile.ZipFile]:
    """The archive opened for reading; ArchiveInvalid / ArchiveTruncated when it is no zip."""
    with path.open("rb") as fh:
        head = fh.read(4)
    if head not in _ZIP_MAGIC:
        raise ArchiveInvalid(
            "This file is not a StudyRAG notebook archive (not a zip file).",
            details={"reason": "not_zip"},
        )
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        # It starts like a zip, but its directory (written last) is missing or cut.
        raise ArchiveTruncated(
            f"The archive is incomplete or damaged: {exc}.", details={"reason": "truncated"}
        ) from exc
    try:
        yield zf
    finally:
        zf.close()


def check_name(info: zipfile.ZipInfo) -> None:
    """ArchiveUnsafe for an entry that would land outside its place, or is a link."""
    name = info.orig_filename
    problem = ""
    if "\x00" in name or "\\" in name:
        problem = "a NUL or backslash in its name"
    elif name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        problem = "an absolute name"
    elif any(part in ("..", ".", "") for part in name.rstrip("/").split("/")):
        problem = "a '..' or empty path part"
    else:
        mode = info.external_attr >> 16
        if info.create_system == 3 and (stat.S_ISLNK(mode) or stat.S_ISCHR(mode)):
            problem = "a symbolic link or device"
        elif info.create_system == 3 and (stat.S_ISBLK(mode) or stat.S_ISFIFO(mode)):
            problem = "a device or pipe"
    if problem:
        raise ArchiveUnsafe(
            f"The archive entry {name!r} is refused: {problem}.",
            details={"entry": name, "reason": problem},
        )


class Counter:
    """Bytes inflated so far over the whole archive, against the limits."""

    def __init__(self, limits: ArchiveSettings) -> None:
        self.limits = limits
        self.total = 0

    def add(self, info: zipfile.ZipInfo, done: int, n: int) -> None:
        self.total += n
        if self.total > self.limits.max_unpacked_bytes:
            raise ArchiveTooLarge(
                f"The archive unpacks to more than {self.limits.max_unpacked_mb:g} MB.",
                details={"limit": self.limits.max_unpacked_bytes},
            )
        check_ratio(info, done + n, self.limits)


def check_ratio(info: zipfile.ZipInfo, unpacked: int, limits: ArchiveSettings) -> None:
    """ArchiveBomb when an entry unpacks to more than max_ratio times its packed size."""
    if ratio_exceeded(unpacked, info.compress_size, limits.max_ratio):
        raise ArchiveBomb(
            f"The archive entry {info.filename!r} unpacks to more than "
            f"{limits.max_ratio:g} times its packed size: a decompression bomb.",
            details={"entry": info.filename, "packed": info.compress_size},
        )


def read_entry(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, counter: Counter, *, limit: int | None = None
) -> Iterator[bytes]:
    """The entry's bytes in blocks, counted as they are inflated; decoding errors mapped."""
    done = 0
    try:
        with zf.open(info) as fh:
            while block := fh.read(BLOCK):
                counter.add(info, done, len(block))
                done += len(block)
                if limit is not None and done > limit:
                    raise ArchiveTooLarge(
                        f"The archive entry {info.filename!r} is over {limit >> 20} MB.",
                        details={"entry": info.filename},
                    )
                yield block
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise ArchiveInvalid(
            f"The archive entry {info.filename!r} is damaged: {exc}.",
            details={"entry": info.filename, "reason": "damaged"},
        ) from exc


def read_json(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, counter: Counter, *, limit: int
) -> tuple[Any, str]:
    """(parsed JSON, sha256 of its bytes)."""
    data = b"".join(read_entry(zf, info, counter, limit=limit))
    try:
        return json.loads(data), hashlib.sha256(data).hexdigest()
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArchiveInvalid(
            f"The archive entry {info.filename!r} is not valid JSON: {exc}.",
            details={"entry": info.filename},
        ) from exc


def parse(model: type[M], value: Any, entry: str) -> M:
    """`value` as `model`, or ArchiveInvalid naming the first field that is wrong."""
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()))
        raise ArchiveInvalid(
            f"The archive entry {entry!r} is not valid: {where or 'value'}: {first['msg']}.",
            details={"entry": entry, "field": where},
        ) from exc


def decode_vectors(data: bytes, dimensions: int) -> list[list[float]]:
    """float32 little-endian rows of `dimensions` values."""
    values = array.array("f")
    values.frombytes(data)
    if sys.byteorder != "little":
        values.byteswap()
    return [list(values[i : i + dimensions]) for i in range(0, len(values), dimensions)]


def encode_vectors(rows: list[list[float]]) -> bytes:
    values = array.array("f", (x for row in rows for x in row))
    if sys.byteorder != "little":
        values.byteswap()
    return values.tobytes()


class _Checker:
    """One pass over every entry of an archive."""

    def __init__(self, zf: zipfile.ZipFile, limits: ArchiveSettings) -> None:
        self.zf = zf
        self.limits = limits
        self.counter = Counter(limits)

    def run(self) -> ArchiveSummary:
        infos = self.zf.infolist()
        if len(infos) > self.limits.max_entries:
            raise ArchiveTooLarge(
                f"The archive has {len(infos)} entries; the limit is {self.limits.max_entries}.",
                details={"entries": len(infos)},
            )
        for info in infos:
            check_name(info)
        by_name: dict[str, zipfile.ZipInfo] = {}
        declared = 0
        for info in infos:
            self._check_entry(info)
            if info.filename in by_name:
                raise ArchiveInvalid(
                    f"The archive holds {info.filename!r} twice.", details={"entry": info.filename}
                )
            by_name[info.filename] = info
            declared += info.file_size
            check_ratio(info, info.file_size, self.limits)
        if declared > self.limits.max_unpacked_bytes:
            raise ArchiveTooLarge(
                f"The archive unpacks to {declared / 1e6:.1f} MB; the limit is "
                f"{self.limits.max_unpacked_mb:g} MB.",
                details={"unpacked": declared, "limit": self.limits.max_unpacked_bytes},
            )
        manifest = self._manifest(by_name)
        listed = set(manifest.entries)
        present = set(by_name) - {MANIFEST}
        if listed != present:
            missing, extra = sorted(listed - present), sorted(present - listed)
            raise ArchiveInvalid(
                "The archive does not match its manifest"
                + (f"; missing: {', '.join(missing[:5])}" if missing else "")
                + (f"; not listed: {', '.join(extra[:5])}" if extra else "")
                + ".",
                details={"missing": missing[:50], "unlisted": extra[:50]},
            )
        for name in sorted(_referenced(manifest) - present):
            raise ArchiveInvalid(
                f"The manifest names {name!r}, which the archive does not hold.",
                details={"entry": name},
            )
        chunks = messages = 0
        for ref in manifest.documents:
            chunks += self._document(manifest, ref.entry, ref.original, ref.vectors, ref.chunks)
        for entry in manifest.conversations:
            messages += self._conversation(manifest, entry)
        for name in sorted(present - _referenced(manifest)):
            raise ArchiveInvalid(
                f"The archive entry {name!r} belongs to no document or conversation.",
                details={"entry": name},
            )
        return ArchiveSummary(
            manifest=manifest,
            documents=len(manifest.documents),
            chunks=chunks,
            conversations=len(manifest.conversations),
            messages=messages,
            unpacked_bytes=self.counter.total,
        )

    def _check_entry(self, info: zipfile.ZipInfo) -> None:
        if info.is_dir() or not (
            info.filename == MANIFEST
            or any(p.fullmatch(info.filename) for p in ENTRY_PATTERNS.values())
        ):
            raise ArchiveInvalid(
                f"The archive entry {info.filename!r} is not part of a notebook archive.",
                details={"entry": info.filename},
            )
        if info.flag_bits & 0x1:
            raise ArchiveInvalid(
                f"The archive entry {info.filename!r} is encrypted.",
                details={"entry": info.filename},
            )
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ArchiveInvalid(
                f"The archive entry {info.filename!r} uses an unsupported compression.",
                details={"entry": info.filename},
            )

    def _manifest(self, by_name: dict[str, zipfile.ZipInfo]) -> ArchiveManifest:
        info = by_name.get(MANIFEST)
        if info is None:
            raise ArchiveInvalid(
                "The archive has no manifest.json: it is not a StudyRAG notebook archive.",
                details={"reason": "no_manifest"},
            )
        raw, _ = read_json(self.zf, info, self.counter, limit=_MAX_MANIFEST)
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ArchiveInvalid(
                "The archive's manifest does not describe a StudyRAG notebook.",
                details={"reason": "format"},
            )
        version = raw.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise ArchiveInvalid(
                "The archive's manifest has no format version.", details={"reason": "version"}
            )
        if version != FORMAT_VERSION:
            newer = version > FORMAT_VERSION
            raise ArchiveVersionUnsupported(
                f"The archive has format version {version}; this StudyRAG reads version "
                f"{FORMAT_VERSION}" + (" (it was made by a newer StudyRAG)." if newer else "."),
                details={"format_version": version, "supported": [FORMAT_VERSION]},
            )
        manifest = parse(ArchiveManifest, raw, MANIFEST)
        try:
            # The name the import will give the notebook, checked now: a job that fails on
            # it after the 202 would leave a failed job behind for a refusable archive.
            clean_name(manifest.notebook.name)
        except InvalidNotebook as exc:
            raise ArchiveInvalid(
                f"The archive's notebook name {manifest.notebook.name!r} cannot be used: "
                f"{exc.message}",
                details={"entry": MANIFEST, "field": "notebook.name"},
            ) from exc
        return manifest

    def _verify(self, manifest: ArchiveManifest, name: str, sha: str, size: int) -> None:
        expected = manifest.entries[name]
        if expected.sha256 != sha or expected.size != size:
            raise ArchiveInvalid(
                f"The archive entry {name!r} is damaged: its content does not match the manifest.",
                details={"entry": name, "reason": "checksum"},
            )

    def _hash(self, manifest: ArchiveManifest, name: str) -> tuple[str, int]:
        """Stream an entry through sha256, checked against the manifest; (sha, size)."""
        info = self.zf.getinfo(name)
        digest = hashlib.sha256()
        size = 0
        for block in read_entry(self.zf, info, self.counter):
            digest.update(block)
            size += len(block)
        sha = digest.hexdigest()
        self._verify(manifest, name, sha, size)
        return sha, size

    def _document(
        self,
        manifest: ArchiveManifest,
        entry: str,
        original: str | None,
        vectors: str | None,
        declared_chunks: int,
    ) -> int:
        for name, kind in ((entry, "document"), (original, "original"), (vectors, "vectors")):
            if name is not None and not ENTRY_PATTERNS[kind].fullmatch(name):
                raise ArchiveInvalid(
                    f"The manifest names {name!r} as a {kind} entry.", details={"entry": name}
                )
        raw, sha = read_json(self.zf, self.zf.getinfo(entry), self.counter, limit=_MAX_JSON_ENTRY)
        info = self.zf.getinfo(entry)
        self._verify(manifest, entry, sha, info.file_size)
        doc = parse(ArchivedDocument, raw, entry)
        n = len(doc.chunks)
        content = doc.content or ""
        bad = ""
        if n != declared_chunks:
            bad = f"{n} chunks where the manifest says {declared_chunks}"
        elif [c.index for c in doc.chunks] != list(range(n)):
            bad = "chunk indexes are not 0, 1, 2, …"
        elif doc.chunk_ids and len(doc.chunk_ids) != n:
            bad = "chunk ids do not match its chunks"
        elif any(not (0 <= c.start_char <= c.end_char <= len(content)) for c in doc.chunks):
            bad = "a chunk's offsets lie outside the document's text"
        elif doc.status == "completed" and not n:
            bad = "a completed document without chunks"
        elif doc.status != "completed" and n:
            bad = f"a {doc.status} document with chunks"
        elif original is not None and original != f"originals/{doc.sha256}":
            bad = "its original does not have its sha256"
        elif vectors is not None and not n:
            bad = "vectors without chunks"
        if bad:
            raise ArchiveInvalid(
                f"The archive entry {entry!r} is not valid: {bad}.", details={"entry": entry}
            )
        if original is not None:
            sha, size = self._hash(manifest, original)
            if sha != doc.sha256 or size != doc.size:
                raise ArchiveInvalid(
                    f"The original of {doc.filename!r} does not match its document.",
                    details={"entry": original},
                )
        if vectors is not None:
            self._vectors(manifest, vectors, n)
        return n

    def _vectors(self, manifest: ArchiveManifest, name: str, rows: int) -> None:
        dims = manifest.dimensions
        info = self.zf.getinfo(name)
        if dims is None or info.file_size != rows * dims * 4:
            raise ArchiveInvalid(
                f"The archive entry {name!r} does not hold {rows} vectors of {dims} dimensions.",
                details={"entry": name},
            )
        data = b"".join(read_entry(self.zf, info, self.counter, limit=_MAX_JSON_ENTRY))
        self._verify(manifest, name, hashlib.sha256(data).hexdigest(), len(data))
        values = array.array("f")
        values.frombytes(data)
        if not all(math.isfinite(x) for x in values):
            raise ArchiveInvalid(
                f"The archive entry {name!r} holds values that are not numbers.",
                details={"entry": name},
            )

    def _conversation(self, manifest: ArchiveManifest, entry: str) -> int:
        if not ENTRY_PATTERNS["conversation"].fullmatch(entry):
            raise ArchiveInvalid(
                f"The manifest names {entry!r} as a conversation entry.", details={"entry": entry}
            )
        info = self.zf.getinfo(entry)
        raw, sha = read_json(self.zf, info, self.counter, limit=_MAX_JSON_ENTRY)
        self._verify(manifest, entry, sha, info.file_size)
        conv = parse(ArchivedConversation, raw, entry)
        seqs = [m.seq for m in conv.messages]
        if len(set(seqs)) != len(seqs) or any(s > conv.last_seq for s in seqs):
            raise ArchiveInvalid(
                f"The archive entry {entry!r} is not valid: message numbers repeat or pass "
                "last_seq.",
                details={"entry": entry},
            )
        if any(not isinstance(s, dict) for m in conv.messages for s in m.sources):
            raise ArchiveInvalid(
                f"The archive entry {entry!r} is not valid: a source is not an object.",
                details={"entry": entry},
            )
        return len(conv.messages)


def _referenced(manifest: ArchiveManifest) -> set[str]:
    """Every entry the manifest's documents and conversations name."""
    return (
        {r.entry for r in manifest.documents}
        | {r.original for r in manifest.documents if r.original}
        | {r.vectors for r in manifest.documents if r.vectors}
        | set(manifest.conversations)
    )


def iter_entry(zf: zipfile.ZipFile, name: str, counter: Counter) -> Iterator[bytes]:
    """An entry of an archive that passed check_archive, in blocks (still counted)."""
    return read_entry(zf, zf.getinfo(name), counter)


def load_json(zf: zipfile.ZipFile, name: str, counter: Counter) -> Any:
    return read_json(zf, zf.getinfo(name), counter, limit=_MAX_JSON_ENTRY)[0]
