import io

import numpy as np
import pytest
from PIL import Image

from tlpipe.data.images import decode


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.robustness
def test_grayscale_becomes_rgb():
    out = decode(encode(Image.new("L", (20, 10), 200)), 8, "squash")
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8 and (out == 200).all()


@pytest.mark.robustness
def test_palette_and_palette_with_transparency():
    palette = Image.new("P", (10, 10), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    assert (decode(encode(palette), 4, "squash")[..., 0] == 255).all()
    palette.info["transparency"] = 1
    out = decode(encode(palette, transparency=1), 4, "squash")
    assert (out == 0).all()  # fully transparent pixels are composited on black


@pytest.mark.robustness
def test_rgba_alpha_composited_on_black():
    image = Image.new("RGBA", (10, 10), (200, 100, 50, 128))
    out = decode(encode(image), 4, "squash")
    assert np.allclose(out[0, 0], [100, 50, 25], atol=2)


@pytest.mark.robustness
def test_cmyk_jpeg():
    out = decode(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"), 8, "squash")
    assert out[..., 0].mean() > 200 and out[..., 1].mean() < 60


@pytest.mark.robustness
def test_16_bit_png_is_scaled_not_clipped():
    pixels = np.full((10, 10), 32768, dtype=np.uint16)
    out = decode(encode(Image.fromarray(pixels)), 4, "squash")
    assert abs(int(out[0, 0, 0]) - 128) <= 1


@pytest.mark.robustness
def test_exif_orientation_applied():
    image = Image.new("RGB", (20, 10), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 10, 10))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    out = decode(encode(image, "JPEG", exif=exif.tobytes(), quality=95), 10, "pad")
    # Shown upright the image is 10 wide, 20 tall, blue on top: padded left and right.
    assert out[1, 5, 2] > 200 and out[8, 5, 0] > 200
    assert out[5, 0].max() < 30


@pytest.mark.parametrize("mode", ["squash", "center-crop", "pad"])
@pytest.mark.robustness
def test_huge_aspect_ratio_and_one_pixel(mode):
    assert decode(encode(Image.new("RGB", (4000, 3), (9, 9, 9))), 16, mode).shape == (16, 16, 3)
    assert decode(encode(Image.new("RGB", (1, 1), (7, 7, 7))), 16, mode).shape == (16, 16, 3)


def test_center_crop_keeps_the_middle():
    image = Image.new("RGB", (30, 10), (255, 0, 0))
    image.paste((0, 255, 0), (10, 0, 20, 10))
    assert (decode(encode(image), 10, "center-crop")[..., 1] > 250).all()


def test_jpeg_draft_mode_still_gives_exact_size():
    gradient = np.tile(np.linspace(0, 255, 800, dtype=np.uint8), (600, 1))
    data = encode(Image.fromarray(gradient).convert("RGB"), "JPEG", quality=95)
    out = decode(data, 64, "squash")
    assert out.shape == (64, 64, 3)
    assert abs(int(out[:, 32, 0].mean()) - 128) < 8


@pytest.mark.parametrize(
    "content",
    [b"", b"this is not an image", None],
    ids=["zero-bytes", "text", "truncated-jpeg"],
)
@pytest.mark.robustness
def test_unreadable_raises(content):
    if content is None:
        content = encode(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")[:200]
    with pytest.raises(Exception):
        decode(content, 8, "squash")


@pytest.mark.robustness
def test_decompression_bomb_guard_stays_on():
    image = Image.new("1", (30000, 30000))  # 900 Mpx > 2 x Pillow's limit, tiny as a PNG
    with pytest.raises(Image.DecompressionBombError):
        decode(encode(image), 8, "squash")


@pytest.mark.parametrize("contrast", ["equalize", "autocontrast"])
def test_contrast_normalisation_stretches_a_dim_image(contrast):
    dim = np.tile(np.linspace(100, 140, 32).astype(np.uint8), (32, 1))
    out = decode(encode(Image.fromarray(dim)), 32, "squash", contrast)
    assert out.min() < 20 and out.max() > 235
    assert np.array_equal(decode(encode(Image.fromarray(dim)), 32, "squash"), np.stack([dim] * 3, axis=-1))
