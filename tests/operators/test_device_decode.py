"""JPEG decode inside the encoder (device "cpu" here): same pixels within rounding, same embeddings, same outcomes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from clipline.models.loader import image_size_for
from clipline.operators import device_decode
from clipline.operators.base import WorkerState
from clipline.operators.decode import (
    DecodeImages,
    DecodeLimits,
    RowFailure,
    decode_frame,
    decode_image,
    jpeg_for_encoder,
)
from clipline.operators.device_decode import RESIZE_GROUP, DeviceJpegDecoder, group_length
from clipline.operators.encode import EncodeClip
from clipline.schemas.config import ModelConfig
from clipline.schemas.table import ErrorCode
from tests.operators.images import asymmetric, encode, png_with_declared_size

MAX_PIXELS = 10**8
LIMITS = DecodeLimits(max_pixels=MAX_PIXELS)
# The same tests run on a GPU where there is one (benchmarks/gpu_check.sh runs them first).
DEVICES = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
EXIF_ROTATE_90 = 6


def photo(seed: int, size: tuple[int, int]) -> Image.Image:
    """Smooth colour with noise, like a photo: JPEG artefacts and resampling behave as on real uploads."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width * 255, y / height * 255, (x * y) / (width * height) * 255], axis=-1)
    base += rng.normal(0, 8, base.shape)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = EXIF_ROTATE_90
    return encode(asymmetric((160, 90)), "JPEG", exif=exif.tobytes())


GOOD_JPEGS = {
    "landscape": encode(photo(0, (640, 480)), "JPEG", quality=85),
    "portrait": encode(photo(1, (375, 700)), "JPEG", quality=90),
    "progressive": encode(photo(2, (512, 512)), "JPEG", quality=85, progressive=True),
    "greyscale": encode(photo(3, (300, 200)).convert("L"), "JPEG"),
    "small": encode(photo(4, (40, 30)), "JPEG"),  # upscaled to the model size
}
TRUNCATED = GOOD_JPEGS["landscape"][: len(GOOD_JPEGS["landscape"]) // 2]
CORRUPT_WITH_END = GOOD_JPEGS["landscape"][:2000] + bytes(range(256)) * 12 + GOOD_JPEGS["landscape"][5072:]


@pytest.mark.parametrize("name", list(GOOD_JPEGS))
def test_device_pixels_match_pillow_within_rounding(name):
    data = GOOD_JPEGS[name]
    assert jpeg_for_encoder(data, 224, LIMITS)
    pillow = decode_image(data, 224, MAX_PIXELS).astype(np.int16)
    pixels, failures, _ = DeviceJpegDecoder(224, MAX_PIXELS, torch.device("cpu"))([data])
    device = pixels[0].permute(1, 2, 0).numpy().astype(np.int16)
    assert not failures and device.shape == pillow.shape == (224, 224, 3)
    difference = np.abs(device - pillow)
    assert difference.mean() < 0.5 and difference.max() <= 3


@pytest.mark.parametrize(
    "data",
    [TRUNCATED, rotated_jpeg(), encode(photo(5, (64, 48)).convert("CMYK"), "JPEG"), encode(photo(6, (64, 48)), "PNG")],
    ids=["truncated", "exif-rotated", "cmyk", "png"],
)
def test_jpegs_the_device_would_decode_differently_stay_on_the_cpu_path(data):
    assert not jpeg_for_encoder(data, 224, LIMITS)


def test_header_checks_run_before_anything_passes_through():
    with pytest.raises(RowFailure) as too_large:
        jpeg_for_encoder(encode(photo(7, (400, 300)), "JPEG"), 224, DecodeLimits(max_pixels=1000))
    assert too_large.value.code == ErrorCode.IMAGE_TOO_LARGE


@pytest.mark.parametrize(
    "limits",
    [DecodeLimits(max_pixels=MAX_PIXELS, max_jpeg_scans=3), DecodeLimits(max_pixels=MAX_PIXELS, decode_budget=2**20)],
    ids=["too-many-scans", "over-the-budget"],
)
def test_a_jpeg_the_cpu_path_refuses_never_passes_through(limits):
    """The progressive JPEG's scans and coefficient buffer are refused before the device would decode it."""
    data = GOOD_JPEGS["progressive"]
    with pytest.raises(RowFailure) as passing:
        jpeg_for_encoder(data, 224, limits)
    with pytest.raises(RowFailure) as on_cpu:
        decode_frame(data, 224, MAX_PIXELS, limits)
    assert passing.value.code == ErrorCode.IMAGE_TOO_LARGE
    assert (passing.value.code, passing.value.message) == (on_cpu.value.code, on_cpu.value.message)


@pytest.mark.parametrize("device", DEVICES)
def test_a_jpeg_the_device_refuses_gets_pillows_outcome(device):
    decoder = DeviceJpegDecoder(64, MAX_PIXELS, torch.device(device))
    failures = decoder([GOOD_JPEGS["small"], CORRUPT_WITH_END, GOOD_JPEGS["greyscale"]]).failures
    with pytest.raises(RowFailure) as pillow:
        decode_image(CORRUPT_WITH_END, 64, MAX_PIXELS)
    assert list(failures) == [1]
    assert (failures[1].code, failures[1].message) == (pillow.value.code, pillow.value.message)


def input_rows() -> pa.Table:
    images = [
        *GOOD_JPEGS.values(),
        encode(asymmetric(), "PNG"),
        rotated_jpeg(),
        TRUNCATED,
        CORRUPT_WITH_END,
        png_with_declared_size(50_000, 50_000),
        b"not an image",
        None,
    ]
    texts = [f"caption {i}" if i % 2 else None for i in range(len(images) - 1)] + ["text only"]
    return pa.table(
        {
            "id": [f"r{i}" for i in range(len(images))],
            "image": pa.array(images, pa.binary()),
            "text": pa.array(texts, pa.string()),
            "source": [f"f#{i}" for i in range(len(images))],
        }
    )


def run_both_paths(model: ModelConfig, device: str = "cpu") -> tuple[pa.Table, pa.Table]:
    size = image_size_for(model.arch)
    cpu_decode = DecodeImages(size, MAX_PIXELS, 10**8)
    device_decode = DecodeImages(size, MAX_PIXELS, 10**8, jpeg_to_encoder=True)
    outputs = []
    for decode, on_device in ((cpu_decode, False), (device_decode, True)):
        encoder = EncodeClip(model, device=device, max_pixels=MAX_PIXELS)
        encoder.setup(WorkerState())
        decoded = decode(input_rows())
        assert ("jpeg" in decoded.column_names) == on_device
        outputs.append(encoder(decoded))
    return outputs[0], outputs[1]


@pytest.mark.parametrize("model", [{}, {"arch": "ViT-B-32", "pretrained": "none"}], ids=["tiny", "vit-b-32"])
@pytest.mark.parametrize("device_name", DEVICES)
def test_device_path_gives_the_cpu_paths_outcomes_and_embeddings(tmp_path, model, device_name):
    config = ModelConfig(**model, cache_dir=str(tmp_path))  # no 600 MB left in ~/.cache
    pillow, device = run_both_paths(config, device_name)
    for column in ("id", "status", "error_code", "error_message", "content_sha256"):
        assert device.column(column).to_pylist() == pillow.column(column).to_pylist(), column
    assert "jpeg" not in device.column_names and "pixels" not in device.column_names
    codes = pillow.column("error_code").to_pylist()
    assert codes[-5:-1] == ["image_decode_failed", "image_decode_failed", "image_too_large", "image_decode_failed"]
    for column in ("image_embedding", "text_embedding"):
        a, b = pillow.column(column).to_pylist(), device.column(column).to_pylist()
        assert [v is None for v in a] == [v is None for v in b]
        cosines = [float(np.dot(x, y)) for x, y in zip(a, b, strict=True) if x is not None]
        assert min(cosines) >= 0.99, (column, cosines)
    assert sum(v is not None for v in device.column("image_embedding").to_pylist()) == len(GOOD_JPEGS) + 2


def test_same_size_images_resized_together_match_each_resized_alone():
    same = [encode(photo(seed, (640, 480)), "JPEG") for seed in (10, 11, 12)]
    decoder = DeviceJpegDecoder(224, MAX_PIXELS, torch.device("cpu"))
    together = decoder([*same, GOOD_JPEGS["portrait"]]).pixels
    for index, data in enumerate([*same, GOOD_JPEGS["portrait"]]):
        alone = decoder([data]).pixels
        assert torch.equal(together[index], alone[0])


def test_large_images_resize_in_groups_whose_float_copy_fits_the_bound(monkeypatch):
    assert group_length((3, 480, 640)) == RESIZE_GROUP
    assert group_length((3, 3000, 4000)) == 3 and group_length((3, 8000, 8000)) == 1
    monkeypatch.setattr(device_decode, "GROUP_FLOAT_BYTES", 2 * 4 * 3 * 640 * 480)  # groups of 2, then 1
    resized_together, fit = [], device_decode.fit_square_tensor

    def fit_and_count(images: torch.Tensor, size: int) -> torch.Tensor:
        resized_together.append(len(images))
        return fit(images, size)

    same = [encode(photo(seed, (640, 480)), "JPEG") for seed in (13, 14, 15)]
    decoder = DeviceJpegDecoder(224, MAX_PIXELS, torch.device("cpu"), frames=True)
    with monkeypatch.context() as patched:
        patched.setattr(device_decode, "fit_square_tensor", fit_and_count)
        grouped = decoder(same)
    assert resized_together == [2, 1]
    for index, data in enumerate(same):
        alone = decoder([data])
        assert torch.equal(grouped.pixels[index], alone.pixels[0])
        assert grouped.frames[index].tobytes() == alone.frames[0].tobytes()
