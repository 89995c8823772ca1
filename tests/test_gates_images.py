"""The image gate (ipo_cli/gates/images.py): size and aspect checked from the header
before anything is decoded or resized; Pillow's bomb warning becomes our reason."""

from __future__ import annotations

import warnings

import pytest
from PIL import Image

from ipo_cli.data.folders import UnreadableImage, load_image
from ipo_cli.gates import images


def test_the_limits_are_pillows_bomb_limit_and_20_to_1():
    assert images.MAX_PIXELS == Image.MAX_IMAGE_PIXELS == 89_478_485
    assert images.image_problem(224, 224) is None and images.image_problem(2000, 100) is None
    assert "20000:1" in images.image_problem(1, 20000)
    assert "MP" in images.image_problem(10_000, 10_000)


def test_a_tiny_file_of_an_absurd_shape_is_refused_before_decoding(tmp_path):
    path = tmp_path / "thin.png"
    Image.new("L", (1, 20000)).save(path)
    assert path.stat().st_size < 1000
    with pytest.raises(UnreadableImage, match="20000:1"):
        load_image(path)


def test_a_bomb_warning_becomes_the_reason_not_stderr(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (40, 30)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1200 px: Pillow warns (under 2x), no error
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning escaping the gate fails the test
        with pytest.raises(UnreadableImage, match="decompression bomb"):
            load_image(path)


def test_an_ordinary_image_loads(tmp_path):
    path = tmp_path / "ok.png"
    Image.new("RGBA", (30, 20), (0, 0, 0, 0)).save(path)
    img = load_image(path)
    assert img.size == (30, 20) and img.mode == "RGB" and img.getpixel((0, 0)) == (255, 255, 255)
