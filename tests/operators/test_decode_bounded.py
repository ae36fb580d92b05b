"""Bounded decode: the same pixels and frame as before for ordinary images, bounded memory for hostile ones.

The memory tests run the decode in a fresh interpreter and read the kernel's peak RSS after
resetting it right before the call (VmHWM via /proc/self/clear_refs), so they measure the decode
and nothing else. Each is built to fail if its guard is removed:
  * crop-before-resize: a 1500x1 image with the aspect guard switched off: resizing the whole
    image first needs ~300 MB, the strips a few MB;
  * 16-bit conversion without float64: 4000x4000 16-bit PNG, float64 copies took ~430 MB;
  * PNG strips: 6000x6000 RGBA PNG, a full decode holds 137 MiB.
The aspect guard, JPEG drafting and the decoder budget are held to the memory budget by
`tests/faults/test_hostile_inputs.py`, clipline's own pixel limit by `tests/faults/test_bomb_memory.py`.
"""

from __future__ import annotations

import io
import json
import random
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.hostile_corpus import png_bytes
from clipline.operators import decode as bd
from clipline.operators.decode import DecodeLimits, RowFailure, decode_frame, decode_image
from clipline.operators.resample import TRANSPOSE_FOR_ORIENTATION, Plan
from clipline.schemas.table import ErrorCode
from tests.operators.decode_reference import reference_frame, reference_horizontal_first
from tests.operators.images import RED, asymmetric

REPO = Path(__file__).resolve().parents[2]
LIMIT = 64_000_000


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def textured(size, seed=0) -> Image.Image:
    """Smooth random texture: every resampling difference shows up."""
    width, height = size
    rng = np.random.default_rng(seed)
    steps = rng.integers(-6, 7, (height, width, 3))
    return Image.fromarray((np.cumsum(steps, axis=1) % 256).astype(np.uint8))


def reference_decode(data: bytes, size: int) -> np.ndarray:
    """The whole-image decode's pixels (open → load → exif_transpose → to_rgb → resize → crop)."""
    return reference_frame(data, size)[0]


def assert_same_as_reference(data: bytes, size: int, limits: DecodeLimits | None = None, context: object = None):
    """Pixels and the whole frame byte for byte as the whole-image decode made them."""
    pixels, frame = reference_frame(data, size)
    decoded = decode_frame(data, size, LIMIT, limits)
    assert np.array_equal(pixels, decoded.pixels), context
    assert decoded.frame.mode == "RGB" and decoded.frame.size == frame.size, context
    assert np.array_equal(np.asarray(frame), np.asarray(decoded.frame)), context


def code_of(data: bytes, size: int = 32, **limits) -> str:
    with pytest.raises(RowFailure) as caught:
        decode_image(data, size, limits.pop("max_pixels", LIMIT), limits=DecodeLimits(**limits))
    return caught.value.code.value


# ------------------------------------------------------------------------------------------------
# Same output as the old decode and as open_clip's eval transform
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(300, 200), (200, 300), (640, 480), (159, 885), (96, 96), (1024, 342), (97, 250)])
def test_matches_open_clip_eval_transform(shape):
    import open_clip
    import torch

    size = 224
    image = textured(shape, seed=shape[0])
    reference = open_clip.image_transform(size, is_train=False)(image)
    ours = torch.tensor(decode_image(encode(image, "PNG"), size, LIMIT)).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(3, 1, 1)
    assert torch.allclose((ours - mean) / std, reference, atol=1e-5)


def _random_image(rng: random.Random, index: int) -> tuple[Image.Image, dict]:
    width, height = rng.randint(8, 700), rng.randint(8, 700)
    while max(width, height) / min(width, height) > 20:
        height = rng.randint(8, 700)
    mode = rng.choice(["RGB", "RGBA", "L", "LA", "P", "Ptrns", "I;16", "CMYK", "1"])
    g = np.random.default_rng(index)
    options = {}
    if mode == "I;16":
        image = Image.fromarray((np.cumsum(g.integers(-900, 900, (height, width)), axis=1) % 65536).astype(np.uint16))
    elif mode in ("P", "Ptrns"):
        image = textured((width, height), index).convert("P")
        if mode == "Ptrns":
            options["transparency"] = 3
    elif mode == "1":
        image = textured((width, height), index).convert("1")
    elif mode in ("LA", "CMYK"):
        channels = 2 if mode == "LA" else 4
        image = Image.frombytes(
            mode, (width, height), g.integers(0, 256, (height, width, channels), np.uint8).tobytes()
        )
    else:
        image = textured((width, height), index).convert(mode)
    return image, options


@pytest.mark.parametrize("seed", range(4))
def test_bit_identical_to_old_decode(seed):
    """Random shapes, modes, containers and EXIF orientations: the same bytes out as before."""
    rng = random.Random(seed)
    for index in range(40):
        image, options = _random_image(rng, seed * 1000 + index)
        size = rng.choice([32, 64, 224])
        fmt = "TIFF" if image.mode == "CMYK" else rng.choice(["PNG", "PNG", "WEBP"] if image.mode == "RGB" else ["PNG"])
        if image.mode in ("I;16", "1", "LA", "P") or "transparency" in options:
            fmt = "PNG"
        if rng.random() < 0.4:
            exif = Image.Exif()
            exif[0x0112] = rng.randint(1, 8)
            options["exif"] = exif.tobytes()
        if fmt == "WEBP":
            options["lossless"] = True
        data = encode(image, fmt, **options)
        assert_same_as_reference(data, size, context=(image.mode, image.size, fmt, size, options.keys()))


@pytest.mark.parametrize("seed", range(2))
def test_png_strips_are_bit_identical(seed):
    """Strip decoding of PNGs (forced on for small images) reproduces Pillow's own decode."""
    rng = random.Random(100 + seed)
    limits = DecodeLimits(png_stream_min_bytes=0, decode_budget=1)  # budget 1: only strips may decode
    streamed = 0
    for index in range(40):
        image, options = _random_image(rng, index)
        if image.mode == "CMYK":
            continue
        if rng.random() < 0.3:
            exif = Image.Exif()
            exif[0x0112] = rng.choice([1, 2, 3, 4])
            options["exif"] = exif.tobytes()
        data = encode(image, "PNG", **options)
        size = rng.choice([32, 224])
        try:
            got = decode_frame(data, size, LIMIT, limits)
        except RowFailure as failure:  # 1/2/4-bit PNGs are not streamed, and over a budget of 1 byte
            assert failure.code == ErrorCode.IMAGE_TOO_LARGE
            continue
        streamed += 1
        expected_pixels, expected_frame = reference_frame(data, size)
        if Plan.make(*image.size, size).vertical_first:
            # Pillow 13 would run the vertical pass first; strips can only go horizontal first
            # (used only when a full decode is over budget): compare with that order.
            expected_pixels = reference_horizontal_first(data, size)
        assert np.array_equal(expected_pixels, got.pixels), (image.mode, image.size, size)
        assert np.array_equal(np.asarray(expected_frame), np.asarray(got.frame)), (image.mode, image.size)
    assert streamed >= 15


def test_sixteen_bit_grey_alpha_png_strips():
    width, height = 300, 200
    rows = np.cumsum(np.random.default_rng(3).integers(-900, 900, (height, width * 2)), axis=1) % 65536
    data = png_bytes(width, height, depth=16, color_type=4, row=lambda y: rows[y].astype(">u2").tobytes())
    limits = DecodeLimits(png_stream_min_bytes=0, decode_budget=1)
    assert np.array_equal(reference_decode(data, 64), decode_image(data, 64, LIMIT, limits=limits))


# ------------------------------------------------------------------------------------------------
# Colour handling (as before)
# ------------------------------------------------------------------------------------------------


def centre(pixels):
    return tuple(int(v) for v in pixels[pixels.shape[0] // 2, pixels.shape[1] // 2])


def test_sixteen_bit_is_scaled_not_clipped_and_low_values_kept():
    high = Image.fromarray(np.full((40, 40), 32896, dtype=np.uint16))  # 128 * 257
    assert centre(decode_image(encode(high, "PNG"), 32, LIMIT)) == (128, 128, 128)
    low = Image.fromarray(np.full((40, 40), 200, dtype=np.uint16))  # all <= 255: taken as 8-bit values
    assert centre(decode_image(encode(low, "PNG"), 32, LIMIT)) == (200, 200, 200)


def test_other_sample_formats_like_before():
    """Signed 32-bit (clipped), big-endian 16-bit (no getextrema in Pillow) and float TIFFs."""
    values = np.full((40, 60), -5, dtype=np.int32)
    values[:, 20:] = 70000
    ramp = np.arange(40 * 60, dtype=np.uint16).reshape(40, 60) * 20
    for image in [Image.fromarray(values), Image.fromarray(ramp.astype(">u2")), Image.fromarray(ramp / 50.0)]:
        data = encode(image.convert("F") if image.mode == "F" else image, "TIFF")
        assert np.array_equal(reference_decode(data, 32), decode_image(data, 32, LIMIT)), image.mode


def test_cmyk_jpeg():
    red, green, blue = centre(decode_image(encode(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), "JPEG"), 32, LIMIT))
    assert red > 200 and green < 60 and blue < 60


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation(orientation, fmt):
    image = asymmetric((120, 80))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(image, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    assert_same_as_reference(data, 64)
    if fmt == "PNG" and orientation > 1:
        upright = image.transpose(TRANSPOSE_FOR_ORIENTATION[orientation])
        assert np.array_equal(decode_image(data, 64, LIMIT), decode_image(encode(upright, "PNG"), 64, LIMIT))


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animation_first_frame_only(fmt):
    frames = [Image.new("RGB", (64, 64), RED), Image.new("RGB", (64, 64), (20, 20, 220))] * 200
    options = {"save_all": True, "append_images": frames[1:], "duration": 20}
    if fmt == "WEBP":
        options["lossless"] = True
    red, _, blue = centre(decode_image(encode(frames[0], fmt, **options), 32, LIMIT))
    assert red > 180 and blue < 80


# ------------------------------------------------------------------------------------------------
# Refusals before decoding
# ------------------------------------------------------------------------------------------------


def test_extreme_aspect_is_refused_from_the_header():
    assert code_of(png_bytes(30000, 1)) == "image_bad_aspect"
    assert code_of(png_bytes(1, 30000)) == "image_bad_aspect"
    assert code_of(png_bytes(21, 1)) == "image_bad_aspect"
    decode_image(png_bytes(20, 1), 32, LIMIT)  # exactly the limit is fine
    decode_image(png_bytes(21, 1), 32, LIMIT, limits=DecodeLimits(max_aspect=25))  # configurable


def test_clipline_pixel_limit_not_pillows():
    """2000x1000 is 2 MP, nowhere near Pillow's 89 MP bomb warning: only clipline's limit refuses it."""
    data = png_bytes(2000, 1000)
    assert code_of(data, max_pixels=1_000_000) == "image_too_large"
    assert decode_image(data, 32, 3_000_000).shape == (32, 32, 3)


def test_decoder_budget_refuses_expensive_layouts():
    progressive = encode(textured((1200, 1200)), "JPEG", progressive=True, quality=80)
    assert bd.jpeg_scan_count(progressive) > 1
    assert bd.jpeg_scan_count(encode(textured((64, 64)), "JPEG")) == 1
    # coefficient buffer 1200x1200 4:2:0 = ~4.1 MiB, whatever the draft
    assert code_of(progressive, decode_budget=2 * bd.MiB, draft_min_bytes=0) == "image_too_large"
    assert code_of(progressive, max_jpeg_scans=3) == "image_too_large"
    webp = encode(Image.new("RGB", (1000, 1000), RED), "WEBP", lossless=True)  # 4 x 4 MB in libwebp
    assert code_of(webp, decode_budget=8 * bd.MiB) == "image_too_large"
    decode_image(webp, 32, LIMIT, limits=DecodeLimits(decode_budget=32 * bd.MiB))


def test_format_allowlist():
    icon = encode(Image.new("RGB", (32, 32), RED), "ICO")
    assert code_of(icon) == "image_decode_failed"
    decode_image(icon, 32, LIMIT, limits=DecodeLimits(formats=None))  # all of Pillow's formats


def test_gif_whose_frame_outgrows_its_screen():
    data = bytearray(encode(Image.new("P", (3000, 1000), 1), "GIF"))
    struct.pack_into("<HH", data, 6, 1, 1)  # logical screen 1x1
    assert code_of(bytes(data), max_pixels=1_000_000) == "image_too_large"


def _mutations(data: bytes, rng: random.Random, count: int):
    for _ in range(count):
        mutated = bytearray(data)
        choice = rng.random()
        if choice < 0.4:
            mutated = mutated[: rng.randint(0, len(mutated))]
        elif choice < 0.8:
            for _ in range(rng.randint(1, 8)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        else:
            start = rng.randrange(len(mutated))
            mutated[start:start] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        yield bytes(mutated)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's "Corrupt EXIF data" on mutated files
def test_never_raises_anything_but_row_failure():
    rng = random.Random(0)
    seeds = [
        encode(textured((90, 60)), "PNG"),
        encode(textured((90, 60)), "JPEG"),
        encode(textured((90, 60)), "JPEG", progressive=True),
        encode(textured((90, 60)).convert("P"), "GIF"),
        encode(textured((90, 60)), "WEBP"),
        encode(textured((90, 60)), "TIFF", compression="tiff_adobe_deflate"),
        encode(textured((90, 60)), "BMP"),
        png_bytes(300, 200, depth=16, color_type=0),
    ]
    limits = DecodeLimits(png_stream_min_bytes=0)
    for seed in seeds:
        for data in _mutations(seed, rng, 60):
            try:
                pixels = decode_image(data, 32, LIMIT, limits=limits)
            except RowFailure as failure:
                assert failure.code in set(ErrorCode) and failure.message
            else:
                assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8


def test_truncated_png_strips_fail_like_a_full_decode():
    data = png_bytes(2000, 2000, color_type=6, row=bytes(range(256)) * 31 + bytes(64))
    # cut inside the IDAT data: both paths must fail the row
    idat = data.find(b"IDAT")
    truncated = data[: idat + 4 + (len(data) - idat) // 2]
    assert code_of(truncated, png_stream_min_bytes=0) == "image_decode_failed"
    assert code_of(truncated) == "image_decode_failed"  # the same as Pillow decoding it whole


# ------------------------------------------------------------------------------------------------
# Peak memory, measured in a fresh interpreter
# ------------------------------------------------------------------------------------------------

PEAK = textwrap.dedent(
    """
    import json
    from clipline.operators.decode import DecodeLimits, RowFailure, decode_frame
    from benchmarks import hostile_corpus
    data = {build}
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    def rss(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1])
    before = rss("VmRSS")
    try:
        decode_frame(data, 224, {max_pixels}, DecodeLimits({limits}))
        code = "ok"
    except RowFailure as failure:
        code = failure.code.value
    print(json.dumps({{"code": code, "peak_mib": (rss("VmHWM") - before) / 1024, "bytes": len(data)}}))
    """
)


def peak(build: str, limits: str = "", max_pixels: int = LIMIT) -> dict:
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak RSS counter")
    code = PEAK.format(build=build, limits=limits, max_pixels=max_pixels)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True, cwd=REPO
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_peak_crop_before_resize_with_aspect_guard_off():
    """1500x1 with max_aspect disabled: the old path resized to 336000x224 (~300 MB)."""
    result = peak("hostile_corpus.png_bytes(1500, 1)", "max_aspect=1e9")
    assert result["code"] == "ok" and result["bytes"] < 200
    assert result["peak_mib"] < 48, result


def test_peak_sixteen_bit_without_float64():
    """4000x4000 16-bit PNG (~200 KB): 32 MB decoded; float64 copies made it ~430 MB."""
    build = "hostile_corpus.png_bytes(4000, 4000, depth=16, color_type=0, row=hostile_corpus.grey16_row(4000))"
    result = peak(build)
    assert result["code"] == "ok"
    assert result["peak_mib"] < 96, result


def test_peak_png_in_strips():
    """6000x6000 RGBA PNG: a full decode alone holds 137 MiB; strips hold a few MiB."""
    result = peak("hostile_corpus.png_bytes(6000, 6000, color_type=6, row=b'\\x10\\x80\\xf0\\x80' * 6000)")
    assert result["code"] == "ok"
    assert result["peak_mib"] < 64, result
