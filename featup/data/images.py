"""Decode images, label maps and depth maps from bytes or files into the sample contract's arrays, and back.

Real datasets hold grayscale, palette, CMYK, RGBA and 16-bit files next to plain RGB JPEGs: those are
converted (and the conversion noted); corrupt, truncated, float and tiny images raise
:class:`ImageError`, whose message is the reason a pipeline records for the bad sample.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MIN_SIDE = 16  # smaller than one ViT patch: upscaling it to a backbone's input would be noise

ImageSource = bytes | str | os.PathLike | BinaryIO


class ImageError(ValueError):
    """An image, label or depth map cannot be used; the message says what is wrong with it."""


def _open(source: ImageSource) -> Image.Image:
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        with warnings.catch_warnings():
            # Pillow warns (rather than raises) on some damaged files; make that an error we can record.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(fp)
            img.load()
    except UnidentifiedImageError:
        raise ImageError("not a readable image (corrupt, empty, or a format Pillow cannot decode)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"image too large to decode safely: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"damaged image data ({exc}); the file is probably truncated") from None
    return img


def decode_rgb(
    source: ImageSource, *, min_side: int = MIN_SIDE, exif_transpose: bool = False
) -> tuple[np.ndarray, list[str]]:
    """Decode any image Pillow reads into H×W×3 uint8 RGB; returns the array and notes on conversions made.

    ``exif_transpose`` applies the camera's orientation tag; leave it off when a label map is aligned
    with the stored pixels (COCO, ADE20K), turn it on for loose photo folders.
    """
    img = _open(source)
    notes: list[str] = []
    if getattr(img, "n_frames", 1) > 1:
        notes.append(f"first of {img.n_frames} frames")
    if exif_transpose:
        rotated = ImageOps.exif_transpose(img)
        if rotated is not None and rotated.size != img.size:
            notes.append("EXIF orientation applied")
        img = rotated if rotated is not None else img
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        wide = np.asarray(img).astype(np.int64)
        if wide.size and (wide.min() < 0 or wide.max() > 65535):
            raise ImageError(f"{mode} image with values outside 0..65535; save it as 8- or 16-bit")
        # 16-bit grayscale → 8 bit: 65535 / 257 = 255 maps the full range onto the full range.
        gray = np.round(wide / 257.0).astype(np.uint8)
        arr = np.repeat(gray[:, :, None], 3, axis=2)
        notes.append("16-bit grayscale → 8-bit RGB")
    elif mode == "F":
        raise ImageError("32-bit float image: the intended intensity range is unknown; save it as 8- or 16-bit")
    else:
        if mode != "RGB":
            notes.append(
                {
                    "RGBA": "alpha dropped",
                    "LA": "grayscale → RGB, alpha dropped",
                    "PA": "palette → RGB, alpha dropped",
                    "P": "palette → RGB",
                    "L": "grayscale → RGB",
                    "1": "1-bit → RGB",
                    "CMYK": "CMYK → RGB",
                }.get(mode, f"{mode} → RGB")
            )
        arr = np.array(img.convert("RGB"), dtype=np.uint8)
    h, w = arr.shape[:2]
    if min(h, w) < min_side:
        raise ImageError(f"image is {w}×{h} px, smaller than min_side={min_side} px on a side")
    return arr, notes


def decode_label(source: ImageSource) -> np.ndarray:
    """Decode a class-index PNG (8- or 16-bit, grayscale or palette indices) into an H×W integer map."""
    img = _open(source)
    if img.mode in ("L", "P"):
        return np.array(img, dtype=np.uint8)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img)
        if arr.min() < 0 or arr.max() > 65535:
            raise ImageError(f"label map values outside 0..65535 ({img.mode})")
        return arr.astype(np.uint16)
    raise ImageError(
        f"label map has mode {img.mode}: expected one class index per pixel (8/16-bit grayscale or "
        "palette PNG), not a colour-coded image"
    )


def decode_depth(source: ImageSource, *, name: str = "", scale: float = 1000.0) -> np.ndarray:
    """Decode a depth map: ``.npy`` float arrays as stored, 16-bit PNGs divided by ``scale`` (mm → m)."""
    if name.endswith(".npy"):
        data = source if isinstance(source, bytes) else open(source, "rb").read()
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise ImageError(f"unreadable .npy depth map ({exc})") from None
        if arr.ndim != 2:
            raise ImageError(f"depth map must be H×W, got shape {arr.shape}")
        return arr.astype(np.float32)
    img = _open(source)
    if img.mode == "F":
        return np.asarray(img, dtype=np.float32).copy()
    return (np.asarray(img).astype(np.float32) / scale).astype(np.float32)


def encode_image(image: np.ndarray, fmt: str = "jpg", *, quality: int = 95) -> bytes:
    """Encode an H×W×3 uint8 image as JPEG (lossy, small) or PNG (lossless)."""
    buf = io.BytesIO()
    if fmt == "jpg":
        Image.fromarray(image).save(buf, format="JPEG", quality=quality, subsampling=0)
    elif fmt == "png":
        Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    else:
        raise ValueError(f"image_format must be 'jpg' or 'png', got {fmt!r}")
    return buf.getvalue()


def encode_label(label: np.ndarray) -> bytes:
    """Encode a class map as a lossless PNG: 8-bit when every value fits, else 16-bit."""
    buf = io.BytesIO()
    arr = label.astype(np.uint8) if label.size == 0 or label.max() <= 255 else label.astype(np.uint16)
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def encode_depth(depth: np.ndarray) -> bytes:
    """Encode a depth map losslessly as float32 ``.npy``."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(depth, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()
