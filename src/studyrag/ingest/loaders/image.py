"""Image files (PNG, JPEG): a photographed or scanned page, read with OCR as a one-page document.

The page is measured in points from the image's own resolution (its dpi when it states a
plausible one, else 72, one pixel per point), so a 300 dpi A4 scan is an A4 page and its
highlights and renders work like a PDF page's. The metadata is a PDF's: page_count 1,
page_starts [0], page_boxes["1"] with each recognised line's span and box, ocr_pages [1].
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from studyrag.errors import ExtractionFailed
from studyrag.ingest.loaders.base import DocumentBuilder, ExtractedDocument, Loader

# A stated resolution outside this range is taken as a mistake of the writer (0, 1, 10000).
_DPI_RANGE = (50.0, 1200.0)
# Photos larger than this many pixels are refused rather than decoded (a decompression bomb).
MAX_IMAGE_PIXELS = 100_000_000


def open_image(path: Path) -> tuple[np.ndarray, float]:
    """The image upright (EXIF orientation applied) as (h, w, 3) RGB, and its pixels per point."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > MAX_IMAGE_PIXELS:
                    raise ExtractionFailed(
                        f"{path.name} is {image.width}x{image.height} pixels; at most "
                        f"{MAX_IMAGE_PIXELS // 1_000_000} megapixels can be read.",
                        hint="Scale the image down (300 dpi is plenty for text) and upload it "
                        "again.",
                    )
                dpi = _dpi(image.info.get("dpi"))
                upright = ImageOps.exif_transpose(image)
                pixels = np.asarray(upright.convert("RGB"), dtype=np.uint8)
    except ExtractionFailed:
        raise
    except FileNotFoundError as exc:
        raise ExtractionFailed(f"{path.name} does not exist.") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Warning) as exc:
        # Pillow raises OSError for truncated data, SyntaxError for some broken headers.
        raise ExtractionFailed(
            f"{path.name} is damaged or not a PNG/JPEG image: {exc}",
            details={"reason": str(exc)},
            hint="Open it in an image viewer and save it again as PNG or JPEG.",
        ) from exc
    return np.ascontiguousarray(pixels), dpi / 72.0


def _dpi(value: Any) -> float:
    try:
        # PNG stores pixels per metre: 200 dpi comes back as 199.9996.
        dpi = round(float(value[0]), 1)
    except (TypeError, ValueError, IndexError):
        return 72.0
    return dpi if _DPI_RANGE[0] <= dpi <= _DPI_RANGE[1] else 72.0


class ImageLoader(Loader):
    """PNG or JPEG: one page of recognised text (OCR), paragraphs as on a scanned PDF page."""

    suffixes = (".png", ".jpg", ".jpeg")
    file_type = "image"

    def load(self, path: Path) -> ExtractedDocument:
        """Recognise the image's text; DOC_003 when OCR is off or finds nothing."""
        from studyrag.ingest.ocr import MAX_SIDE, engine_version, get_engine, ocr_paragraphs

        pixels, per_point = open_image(path)
        height_px, width_px = pixels.shape[:2]
        width, height = width_px / per_point, height_px / per_point
        if not self.options.ocr:
            raise ExtractionFailed(
                f"{path.name} is an image, and its text can only be read with OCR, which is off; "
                "turn it on with STUDYRAG_INGEST__OCR=true and ingest it again.",
                hint="Turn OCR on (STUDYRAG_INGEST__OCR=true, the default) and ingest it again.",
            )
        # OCR reads at most MAX_SIDE pixels a side; a larger photo is shrunk once, here.
        scale = per_point
        if max(width_px, height_px) > MAX_SIDE:
            from PIL import Image

            factor = MAX_SIDE / max(width_px, height_px)
            size = (max(1, round(width_px * factor)), max(1, round(height_px * factor)))
            pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS))
            scale = pixels.shape[1] / width
        lines = get_engine(self.options.ocr_threads).recognise(pixels)
        found = ocr_paragraphs(lines, scale, len(DocumentBuilder.SEPARATOR))
        if self.options.on_page is not None:
            self.options.on_page(1, 1)
        builder = DocumentBuilder()
        for paragraph in found.paragraphs:
            builder.add(paragraph, page=1)
        if not builder.spans:
            raise ExtractionFailed(
                f"No text was recognised in {path.name}.",
                details={"width": width_px, "height": height_px},
                hint="Check that the text is legible (in focus, about 200 dpi or better).",
            )
        return builder.build(
            {
                "page_count": 1,
                "page_starts": [0],
                "page_boxes": {
                    "1": {
                        "width": round(width, 2),
                        "height": round(height, 2),
                        "lines": [
                            [s, e, *(round(v, 2) for v in box)] for s, e, box in found.line_spans
                        ],
                    }
                },
                "ocr_pages": [1],
                "ocr": {"engine": engine_version()},
                "image": {"width": width_px, "height": height_px},
            }
        )
