"""Offline sample photos and image loading."""

import numpy as np
import pytest
from PIL import Image

from featup.photos import list_sample_photos, load_image, sample_photos, to_tensor


def test_every_sample_photo_loads_offline_as_rgb_uint8():
    photos = sample_photos()
    assert set(photos) == set(list_sample_photos())
    for name, image in photos.items():
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, name
        assert min(image.shape[:2]) >= 200, name


def test_unknown_photo_name_lists_the_available_ones():
    with pytest.raises(ValueError, match="available: .*chelsea"):
        sample_photos(["nope"])


def test_load_image_converts_greyscale_and_rgba(tmp_path):
    Image.fromarray(np.full((8, 9), 200, np.uint8)).save(tmp_path / "g.png")
    Image.fromarray(np.full((8, 9, 4), 100, np.uint8)).save(tmp_path / "a.png")
    for name in ("g.png", "a.png"):
        image = load_image(str(tmp_path / name))
        assert image.shape == (8, 9, 3) and image.dtype == np.uint8
    assert to_tensor(load_image(str(tmp_path / "g.png"))).shape == (1, 3, 8, 9)


def test_load_image_names_the_problem(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.jpg: not a readable image") as caught:
        load_image(str(tmp_path / "bad.jpg"))
    assert " object at 0x" not in str(caught.value)  # the file's name, never the repr of what read it (#15)
    Image.fromarray(np.full((64, 64, 3), 7, np.uint8)).save(tmp_path / "whole.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "whole.png").read_bytes()[:-30])
    with pytest.raises(ValueError, match="cut.png: damaged image data .*probably truncated") as caught:
        load_image(str(tmp_path / "cut.png"))
    assert " object at 0x" not in str(caught.value)
    with pytest.raises(FileNotFoundError, match="absent.png"):
        load_image(str(tmp_path / "absent.png"))


def test_load_image_widens_16_bit_greyscale_to_the_full_8_bit_range(tmp_path):
    # the same decoder as ingest: mid-grey stays mid-grey (Pillow's convert("RGB") clips every value above 255)
    Image.fromarray(np.array([[0, 128 * 257, 65535]], np.uint16)).save(tmp_path / "deep.png")
    assert load_image(str(tmp_path / "deep.png"))[0].tolist() == [[0, 0, 0], [128, 128, 128], [255, 255, 255]]
