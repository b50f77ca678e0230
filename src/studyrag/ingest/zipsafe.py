"""The zip-safety rule, one home for documents (DOCX) and notebook archives alike.

A zip's declared sizes may lie, so bytes are counted as they are inflated, in blocks, and
reading stops at the first entry that unpacks to more than `max_ratio` times its packed size
(past a floor of 1 MiB: one repeated character deflates 1000x and is harmless) or once the
whole file unpacks to more than `max_unpacked` bytes. Nothing is parsed before that.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

from studyrag.errors import FileUnpacksTooLarge

BLOCK = 1 << 20
# Entries smaller than this are never called bombs; the total cap bounds many of them.
RATIO_FLOOR = 1 << 20
# Document file types that are zip containers (sniff_file_type names them).
ZIP_BASED_TYPES = frozenset({"docx"})


def ratio_exceeded(unpacked: int, packed: int, max_ratio: float) -> bool:
    """True when an entry inflated to `unpacked` bytes from `packed` ones is a bomb."""
    return unpacked > RATIO_FLOOR and unpacked > max_ratio * max(1, packed)


def check_zip_document(path: Path, *, max_unpacked: int, max_ratio: float) -> int:
    """Inflate every entry of a zip-based document (counting only); its unpacked size.

    FileUnpacksTooLarge (DOC_014) for a decompression bomb. A file that is no zip or is
    damaged passes: its loader reports that with its own message.
    """
    total = 0
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                done = 0
                with zf.open(info) as fh:
                    while block := fh.read(BLOCK):
                        done += len(block)
                        total += len(block)
                        if ratio_exceeded(done, info.compress_size, max_ratio):
                            raise FileUnpacksTooLarge(
                                f"{path.name} is refused: its part {info.filename!r} unpacks "
                                f"to more than {max_ratio:g} times its packed size "
                                "(a decompression bomb).",
                                details={"entry": info.filename, "packed": info.compress_size},
                            )
                        if total > max_unpacked:
                            raise FileUnpacksTooLarge(
                                f"{path.name} is refused: it unpacks to more than "
                                f"{max_unpacked / (1 << 20):g} MB.",
                                details={"limit": max_unpacked},
                            )
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError):
        return total
    return total
