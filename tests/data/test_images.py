"""Every kind of image a dataset holds is either converted to uint8 RGB or rejected with a reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from featup.data.images import (
    ImageError,
    decode_depth,
    decode_label,
    decode_rgb,
    encode_depth,
    encode_image,
    encode_label,
)


@pytest.mark.parametrize(
    ("name", "note"),
    [
        ("rgb_jpg", None),
        ("rgb_png", None),
        ("gray_png", "grayscale → RGB"),
        ("palette_png", "palette → RGB"),
        ("cmyk_jpg", "CMYK → RGB"),
        ("rgba_png", "alpha dropped"),
        ("gray16_png", "16-bit grayscale → 8-bit RGB"),
        ("rgb16_png", None),
    ],
)
def test_convertible_images_become_uint8_rgb(image_zoo, name, note):
    arr, notes = decode_rgb(image_zoo[name])
    assert arr.dtype == np.uint8 and arr.shape == (32, 48, 3)
    assert arr.flags.writeable
    assert notes == ([note] if note else [])


def test_conversions_keep_the_pixel_values(image_zoo):
    png, _ = decode_rgb(image_zoo["rgb_png"])
    rgba, _ = decode_rgb(image_zoo["rgba_png"])
    gray, _ = decode_rgb(image_zoo["gray_png"])
    np.testing.assert_array_equal(rgba, png)
    np.testing.assert_array_equal(gray, np.repeat(png[..., :1], 3, axis=2))
    # 16-bit: full scale stays full scale (65535 → 255, 25700 → 100)
    rgb16, _ = decode_rgb(image_zoo["rgb16_png"])
    assert tuple(rgb16[0, 0]) == (255, 100, 0)
    gray16, _ = decode_rgb(image_zoo["gray16_png"])
    assert gray16[0, 1, 0] == round(40 / 257) and gray16[31, 47, 0] == round(1535 * 40 / 257)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("corrupt", "not a readable image"),
        ("empty", "not a readable image"),
        ("truncated_jpg", "truncated"),
        ("tiny_png", "5×4 px, smaller than min_side=16"),
        ("float_tiff", "32-bit float image"),
    ],
)
def test_unusable_images_raise_with_the_reason(image_zoo, name, reason):
    with pytest.raises(ImageError, match=reason):
        decode_rgb(image_zoo[name])


def test_min_side_is_a_choice(image_zoo):
    arr, _ = decode_rgb(image_zoo["tiny_png"], min_side=4)
    assert arr.shape == (4, 5, 3)


def test_exif_orientation_applied_only_when_asked():
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(buf, format="JPEG", exif=exif)
    assert decode_rgb(buf.getvalue())[0].shape == (20, 40, 3)
    arr, notes = decode_rgb(buf.getvalue(), exif_transpose=True)
    assert arr.shape == (40, 20, 3) and notes == ["EXIF orientation applied"]


def test_labels_round_trip_losslessly_in_8_and_16_bit():
    small = np.array([[0, 3], [255, 7]], dtype=np.uint8)
    wide = np.array([[0, 300], [65535, 7]], dtype=np.uint16)
    for label in (small, wide):
        out = decode_label(encode_label(label))
        np.testing.assert_array_equal(out, label)
    assert decode_label(encode_label(small)).dtype == np.uint8


def test_colour_label_maps_are_rejected():
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf, format="PNG")
    with pytest.raises(ImageError, match="colour-coded"):
        decode_label(buf.getvalue())


def test_depth_round_trips_and_16bit_png_is_scaled():
    depth = np.random.default_rng(0).random((5, 6)).astype(np.float32) * 10
    np.testing.assert_array_equal(decode_depth(encode_depth(depth), name="d.npy"), depth)
    buf = io.BytesIO()
    Image.fromarray(np.full((3, 3), 1500, np.uint16)).save(buf, format="PNG")
    np.testing.assert_allclose(decode_depth(buf.getvalue(), name="d.png"), 1.5)


def test_png_images_are_lossless_and_jpeg_close():
    rgb = np.random.default_rng(1).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_rgb(encode_image(rgb, "png"))[0], rgb)
    smooth = np.repeat(np.linspace(0, 255, 24, dtype=np.uint8)[None, :, None], 24, 0).repeat(3, 2)
    assert np.abs(decode_rgb(encode_image(smooth, "jpg"))[0].astype(int) - smooth).max() <= 4
    with pytest.raises(ValueError, match="'jpg' or 'png'"):
        encode_image(rgb, "gif")
