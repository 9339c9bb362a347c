"""Decode one image file into an RGB uint8 array of a fixed size."""

import io
from pathlib import PurePosixPath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

RESAMPLE = Image.Resampling.BILINEAR
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}


def is_image_name(path: str) -> bool:
    """What counts as an image file, by its name (the split stage and `tlpipe predict` agree)."""
    return PurePosixPath(path).suffix.lower() in IMAGE_SUFFIXES


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: alpha composited on black, 16/32-bit scaled, not clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16"):
            top = 65535.0
        else:
            top = pixels.max() if pixels.max() > 255 else 255.0
        pixels = np.clip(pixels / max(top, 1e-12) * 255.0, 0, 255)
        image = Image.fromarray(np.round(pixels).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


def _draft_size(width: int, height: int, size: int, mode: str) -> tuple[int, int]:
    """The smallest decoded size that still covers what `mode` will cut and scale to `size`."""
    if mode == "squash":
        return size, size
    scale = size / min(width, height) if mode == "center-crop" else size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def fit(image: Image.Image, size: int, mode: str) -> Image.Image:
    width, height = image.size
    if mode == "squash":
        return image.resize((size, size), RESAMPLE)
    if mode == "center-crop":
        return ImageOps.fit(image, (size, size), RESAMPLE)
    scale = size / max(width, height)
    inner = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), RESAMPLE)
    canvas = Image.new("RGB", (size, size))
    canvas.paste(inner, ((size - inner.width) // 2, (size - inner.height) // 2))
    return canvas



def normalize_contrast(image: Image.Image, contrast: str) -> Image.Image:
    """Per-image contrast normalisation: evens out exposure differences between scanners."""
    if contrast == "equalize":
        return ImageOps.equalize(image)
    if contrast == "autocontrast":
        return ImageOps.autocontrast(image, cutoff=1)
    return image


def decode(content: bytes, size: int, mode: str, contrast: str = "none") -> np.ndarray:
    """Bytes of an image file -> (size, size, 3) uint8. Raises on anything unreadable."""
    image = Image.open(io.BytesIO(content))
    orientation = image.getexif().get(0x0112, 1)
    # draft() lets the JPEG decoder shrink by 1/2..1/8 for free; orientation swaps the axes.
    width, height = image.size if orientation < 5 else image.size[::-1]
    target = _draft_size(width, height, size, mode)
    if image.format == "JPEG" and image.mode in ("RGB", "L", "CMYK"):
        image.draft(image.mode, target if orientation < 5 else target[::-1])
    image = ImageOps.exif_transpose(image)
    image = _to_rgb(image)
    return np.asarray(normalize_contrast(fit(image, size, mode), contrast), dtype=np.uint8)


def decode_or_reason(content: bytes | Exception, size: int, mode: str, contrast: str) -> tuple[np.ndarray | None, str | None]:
    """(pixels, None) for a readable image; (None, why not) for anything else: the per-file report."""
    if isinstance(content, Exception):
        return None, f"unreadable file: {content}"
    if not content:
        return None, "empty file (0 bytes)"
    try:
        return decode(content, size, mode, contrast), None
    except Image.DecompressionBombError as error:
        return None, f"decompression bomb guard: {error}"
    except UnidentifiedImageError:  # its message holds a memory address: not reproducible
        return None, "not an image Pillow can read (unknown format, or not an image at all)"
    except Exception as error:  # noqa: BLE001 - any decoder failure is a per-file report
        return None, f"{type(error).__name__}: {error}"
