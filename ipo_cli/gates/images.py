"""Images: what an image file may cost before ipo decodes and resizes it.

Pillow reads the size from the header without decoding, so the check comes before any
work: more than `MAX_PIXELS` pixels, or a side more than `MAX_ASPECT` times the other, is
refused. The aspect limit matters as much as the pixel limit: CLIP's preprocessing scales
the short side to the model's size (224), so a 161-byte 1x20000 PNG would become a
224x4,480,000 image (about 1 billion pixels, 54 s and 5.7 GB for one image) although it
is far under Pillow's bomb limit.

`MAX_PIXELS` is Pillow's own default `Image.MAX_IMAGE_PIXELS` (89,478,485, about 89.5 MP;
python-pillow/Pillow src/PIL/Image.py: `int(1024 * 1024 * 1024 // 4 // 3)`), above which
Pillow warns with DecompressionBombWarning; ipo refuses there instead, so the warning,
which would reach stderr as two raw lines, never fires (any that does is caught and
becomes the same one reason).
"""

from __future__ import annotations

from pathlib import Path

MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3  # 89,478,485: Pillow's default MAX_IMAGE_PIXELS
MAX_ASPECT = 20.0  # a side at most 20 times the other (panoramas are ~4:1, banners ~10:1)


def image_problem(width: int, height: int) -> str | None:
    """Why an image of this size is refused, or None when it may be decoded."""
    if width <= 0 or height <= 0:
        return f"it claims a size of {width}x{height} pixels"
    pixels = width * height
    if pixels > MAX_PIXELS:
        return (f"it is {width}x{height} pixels ({pixels / 1e6:.1f} MP), over ipo's limit of "
                f"{MAX_PIXELS / 1e6:.1f} MP")
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT:
        return (f"it is {width}x{height} pixels, {ratio:.0f}:1, beyond ipo's limit of {MAX_ASPECT:.0f}:1 "
                "(resizing it for CLIP would take gigabytes)")
    return None


def open_checked(path: Path | str):
    """`Image.open(path)` with its size checked before anything is decoded. Raises ValueError
    with the reason for a refused size; Pillow's own errors pass through (the caller maps
    them to an unreadable image). Pillow's bomb warnings become that ValueError too."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(path)
        except Image.DecompressionBombWarning as exc:
            raise ValueError(f"Pillow calls it a decompression bomb ({exc})") from None
    problem = image_problem(*img.size)
    if problem:
        img.close()
        raise ValueError(problem)
    return img


def decoded(img):
    """`img.load()` with a bomb warning (a later frame, a size that grows) raised as ValueError."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img.load()
        except Image.DecompressionBombWarning as exc:
            raise ValueError(f"Pillow calls it a decompression bomb ({exc})") from None
    problem = image_problem(*img.size)
    if problem:
        raise ValueError(problem)
    return img
