"""The bad-input corpus: every kind of broken or awkward input, with the outcome each must have."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from tests.operators.images import asymmetric, encode, png_with_declared_size

OK = ("ok", None)


@dataclass(frozen=True)
class Case:
    """One input row and its expected (status, error_code) and flags."""

    kind: str
    row: dict
    outcome: tuple[str, str | None] = OK
    flags: list[str] = field(default_factory=list)


def jpeg_with_exif_rotation(image: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # display needs a 90° clockwise turn
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (48, 48), colour) for colour in ((220, 30, 30), (30, 30, 220), (30, 220, 30))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0)


def palette_with_transparency() -> bytes:
    image = Image.new("P", (40, 40), 0)
    image.putpalette([0, 0, 0, 220, 30, 30] + [0] * 762)
    image.paste(1, (0, 0, 20, 40))
    return encode(image, "PNG", transparency=0)


def sixteen_bit_png() -> bytes:
    return encode(Image.fromarray(np.linspace(0, 65535, 64 * 64, dtype=np.uint16).reshape(64, 64)), "PNG")


def cases(missing_uri: str) -> list[Case]:
    good_jpeg = encode(asymmetric((160, 120)), "JPEG", quality=90)
    good_png = encode(asymmetric((160, 120)), "PNG")
    rng = np.random.default_rng(0)
    long_text = " ".join(["a red star next to a blue circle"] * 15)
    decode_failed = ("failed", "image_decode_failed")
    return [
        Case("truncated-jpeg", {"image": good_jpeg[: len(good_jpeg) // 2]}, decode_failed),
        Case("truncated-png", {"image": good_png[: len(good_png) // 2]}, decode_failed),
        Case("zero-bytes", {"image": b""}, decode_failed),
        Case("random-bytes", {"image": rng.bytes(4096)}, decode_failed),
        Case("html-as-jpg", {"image": b"<!doctype html><html><body>404 Not Found</body></html>"}, decode_failed),
        Case(
            "svg",
            {"image": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>'},
            decode_failed,
        ),
        Case("decompression-bomb", {"image": png_with_declared_size(60_000, 60_000)}, ("failed", "image_too_large")),
        Case("one-pixel", {"image": encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG")}),
        Case(
            "strip-20000x20",
            {"image": encode(Image.new("RGB", (20_000, 20), (10, 200, 10)), "PNG")},
            ("failed", "image_bad_aspect"),
        ),
        Case("banner-1600x200", {"image": encode(Image.new("RGB", (1600, 200), (10, 200, 10)), "PNG")}),
        Case("cmyk-jpeg", {"image": encode(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG")}),
        Case("png-16-bit", {"image": sixteen_bit_png()}),
        Case("greyscale", {"image": encode(asymmetric().convert("L"), "PNG")}),
        Case("one-bit", {"image": encode(asymmetric().convert("1"), "PNG")}),
        Case("palette-transparent", {"image": palette_with_transparency()}),
        Case("rgba", {"image": encode(asymmetric().convert("RGBA"), "PNG")}),
        Case("exif-rotated-jpeg", {"image": jpeg_with_exif_rotation(asymmetric((160, 120)))}),
        Case(
            "physically-rotated-jpeg",
            {"image": encode(asymmetric((160, 120)).transpose(Image.Transpose.ROTATE_270), "JPEG", quality=95)},
        ),
        Case("animated-gif", {"image": animated_gif()}),
        Case("webp", {"image": encode(asymmetric(), "WEBP", quality=90)}),
        Case("missing-uri", {"image_uri": missing_uri}, ("failed", "uri_not_found")),
        Case("unlisted-uri-scheme", {"image_uri": "gopher://example.invalid/cat.png"}, ("failed", "uri_not_allowed")),
        Case("null-image-null-text", {}, ("failed", "missing_content")),
        Case("empty-text", {"text": ""}, ("failed", "missing_content")),
        Case("blank-text", {"text": "  \n\t "}, ("failed", "missing_content")),
        Case("text-over-context", {"text": long_text}, OK, ["text_truncated"]),
        Case("duplicate-id-first", {"id": "dup", "text": "a green square"}),
        Case("duplicate-id-second", {"id": "dup", "text": "a yellow ring"}, ("failed", "duplicate_id")),
    ]
