"""Scanned documents made by the tests: text drawn with a real font into an image, the image
wrapped as an image-only PDF (no text layer) or saved as PNG, and where each word was drawn."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

_FONTS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
)
DPI = 200
# A small page (5 x 3.5 in) keeps OCR of a test page to a second or two.
PAGE_PT = (360.0, 252.0)
_MARGIN_PT = 24.0
_FONT_PT = 11.0


def _font(size_px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for path in _FONTS:
        if Path(path).is_file():
            return ImageFont.truetype(path, size_px)
    return ImageFont.load_default(size=size_px)


@dataclass
class ScannedPage:
    """A rendered page and the box (points, top-left) of every word drawn on it."""

    image: Image.Image
    words: dict[str, list[tuple[float, float, float, float]]] = field(default_factory=dict)

    def box(self, word: str) -> tuple[float, float, float, float]:
        return self.words[word][0]


def render_page(paragraphs: list[list[str]], *, dpi: int = DPI) -> ScannedPage:
    """Each paragraph's lines drawn black on white, a blank line between paragraphs."""
    scale = dpi / 72.0
    width, height = round(PAGE_PT[0] * scale), round(PAGE_PT[1] * scale)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = _font(round(_FONT_PT * scale))
    page = ScannedPage(image)
    pitch = _FONT_PT * 1.5 * scale
    x0, y = _MARGIN_PT * scale, _MARGIN_PT * scale
    for paragraph in paragraphs:
        for line in paragraph:
            draw.text((x0, y), line, fill="black", font=font)
            for match in re.finditer(r"\w+", line):
                left = x0 + draw.textlength(line[: match.start()], font=font)
                right = x0 + draw.textlength(line[: match.end()], font=font)
                box = draw.textbbox((x0, y), line, font=font)
                page.words.setdefault(match.group(), []).append(
                    (left / scale, box[1] / scale, right / scale, box[3] / scale)
                )
            y += pitch
        y += pitch
    return page


def save_scanned_pdf(path: Path, pages: list[ScannedPage], *, dpi: int = DPI) -> Path:
    """An image-only PDF: one JPEG per page, no text layer (as a scanner writes it)."""
    first, *rest = [p.image for p in pages]
    first.save(path, "PDF", resolution=float(dpi), save_all=True, append_images=rest)
    return path


def save_png(path: Path, page: ScannedPage, *, dpi: int = DPI) -> Path:
    page.image.save(path, "PNG", dpi=(dpi, dpi))
    return path


def corrupt_image_of_page(path: Path, page_index: int) -> None:
    """Overwrite the JPEG data of one page's image (same length, so the PDF still opens)."""
    data = bytearray(path.read_bytes())
    starts = [m.end() for m in re.finditer(rb"stream\r?\n\xff\xd8", bytes(data))]
    begin = starts[page_index] + 200  # keep the JPEG header, break the scan data
    end = data.index(b"endstream", begin) - 10
    data[begin:end] = bytes(end - begin)
    path.write_bytes(bytes(data))
