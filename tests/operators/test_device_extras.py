"""Per-image extras for JPEGs decoded in the encoder: frames made on the device, extras' columns as on the CPU path."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from clipline.models.loader import image_size_for
from clipline.operators.base import WorkerState
from clipline.operators.decode import DecodeImages, decode_frame
from clipline.operators.device_decode import DeviceJpegDecoder, box_reduce
from clipline.operators.encode import EncodeClip
from clipline.operators.hamming import hamming
from clipline.operators.pdq import PdqHash
from clipline.operators.thumbnail import FrameThumbnail
from clipline.schemas.config import ModelConfig
from tests.operators.images import encode, png_with_declared_size
from tests.operators.test_device_decode import CORRUPT_WITH_END, DEVICES, MAX_PIXELS, TRUNCATED, photo, rotated_jpeg

# Measured on device "cpu": 0 bits and equal quality (torchvision's and Pillow's libjpeg decode the
# same pixels, and the frame reduction repeats Pillow's). The bound leaves room for nvjpeg's IDCT.
MAX_PDQ_BITS = 8
MAX_QUALITY_GAP = 5

# frame_factor: 1 up to 500 px on the long side, then ceil(long / 500) (edge boxes where it does not divide).
EXTRA_JPEGS = {
    "rgb-480x360-as-is": encode(photo(20, (480, 360)), "JPEG", quality=90),
    "grey-300x200-as-is": encode(photo(21, (300, 200)).convert("L"), "JPEG"),
    "small-40x30-as-is": encode(photo(22, (40, 30)), "JPEG"),
    "rgb-640x480-by-2": encode(photo(23, (640, 480)), "JPEG", quality=85),
    "progressive-1201x901-by-3": encode(photo(24, (1201, 901)), "JPEG", quality=85, progressive=True),
    "grey-1001x1700-by-4": encode(photo(25, (1001, 1700)).convert("L"), "JPEG"),
    "rgb444-2001x1333-by-5": encode(photo(26, (2001, 1333)), "JPEG", subsampling=0),
}
BAD_INPUTS = [
    encode(photo(27, (120, 80)), "PNG"),  # decoded in the tasks whatever the choice
    rotated_jpeg(),  # kept on the CPU path
    TRUNCATED,  # refused by the header check
    CORRUPT_WITH_END,  # passes through; the device and then Pillow refuse it in the encoder
    png_with_declared_size(50_000, 50_000),
    b"not an image",
    None,  # text-only row
]
EXTRA_COLUMNS = ("pdq_hash", "pdq_quality", "thumbnail")


def extras() -> list:
    return [PdqHash(), FrameThumbnail()]


def input_rows() -> pa.Table:
    images = [*EXTRA_JPEGS.values(), *BAD_INPUTS]
    return pa.table(
        {
            "id": [f"r{i}" for i in range(len(images))],
            "image": pa.array(images, pa.binary()),
            "text": pa.array([None] * (len(images) - 1) + ["text only"], pa.string()),
        }
    )


def run_path(model: ModelConfig, device: str, on_encoder: bool) -> tuple[pa.Table, pa.Table]:
    """(decode's output, encode's output) with the default extras in both stages, as `run_stages` wires them."""
    chosen = extras()
    decode = DecodeImages(image_size_for(model.arch), MAX_PIXELS, 10**8, extras=chosen, jpeg_to_encoder=on_encoder)
    encoder = EncodeClip(model, device=device, max_pixels=MAX_PIXELS, extras=chosen)
    encoder.setup(WorkerState())
    decoded = decode(input_rows())
    return decoded, encoder(decoded)


def thumbnail_sizes(table: pa.Table) -> list[tuple[int, int] | None]:
    return [Image.open(io.BytesIO(data)).size if data else None for data in table.column("thumbnail").to_pylist()]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("width", "height", "factor"), [(1000, 700, 2), (1003, 701, 3), (37, 23, 5), (130, 2600, 16)])
def test_box_reduce_equals_pillows_reduce(device, width, height, factor):
    """Whole boxes and edge boxes, and Pillow's fixed-point rounding (factor 3 differs from exact rounding)."""
    array = np.random.default_rng(width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    images = torch.from_numpy(array).permute(2, 0, 1)[None].to(device)
    reduced = box_reduce(images, factor)[0].permute(1, 2, 0).cpu().numpy()
    np.testing.assert_array_equal(reduced, np.asarray(Image.fromarray(array).reduce(factor)))


@pytest.mark.parametrize("device", DEVICES)
def test_frames_made_on_the_device_are_the_cpu_paths(device):
    jpegs = list(EXTRA_JPEGS.values())
    made = DeviceJpegDecoder(64, MAX_PIXELS, torch.device(device), frames=True)(jpegs)
    assert not made.failures and sorted(made.frames) == list(range(len(jpegs)))
    for index, data in enumerate(jpegs):
        cpu = decode_frame(data, 64, MAX_PIXELS).frame
        frame = made.frames[index]
        assert frame.mode == "RGB" and frame.size == cpu.size and max(frame.size) <= 500
        difference = np.abs(np.asarray(frame, dtype=np.int16) - np.asarray(cpu.convert("RGB"), dtype=np.int16))
        assert difference.max() <= 3 and difference.mean() < 0.5


@pytest.mark.parametrize("device", DEVICES)
def test_rows_decoded_in_the_encoder_get_the_cpu_paths_extras_and_outcomes(tmp_path, device):
    model = ModelConfig(cache_dir=str(tmp_path))
    _, cpu = run_path(model, device, on_encoder=False)
    decoded, encoded = run_path(model, device, on_encoder=True)

    passed = decoded.column("jpeg").is_valid().to_pylist()
    assert passed == [True] * len(EXTRA_JPEGS) + [False, False, False, True, False, False, False]
    assert decoded.column("pdq_hash").is_null().to_pylist()[: len(EXTRA_JPEGS)] == [True] * len(EXTRA_JPEGS)

    for column in ("id", "status", "error_code", "error_message"):
        assert encoded.column(column).to_pylist() == cpu.column(column).to_pylist(), column
    for column in EXTRA_COLUMNS:
        present = [value is not None for value in encoded.column(column).to_pylist()]
        assert present == [value is not None for value in cpu.column(column).to_pylist()], column
    assert present == [True] * len(EXTRA_JPEGS) + [True, True] + [False] * 5  # PNG and rotated JPEG: in the tasks

    rows = len(EXTRA_JPEGS)
    hashes = [table.column("pdq_hash").to_pylist()[:rows] for table in (encoded, cpu)]
    distances = [hamming(a, b) for a, b in zip(*hashes, strict=True)]
    assert max(distances) <= MAX_PDQ_BITS, distances
    qualities = [table.column("pdq_quality").to_pylist()[:rows] for table in (encoded, cpu)]
    assert max(abs(a - b) for a, b in zip(*qualities, strict=True)) <= MAX_QUALITY_GAP, qualities
    assert thumbnail_sizes(encoded) == thumbnail_sizes(cpu)


class RefusingDevice(DeviceJpegDecoder):
    """A device whose decoder refuses every JPEG: every row takes the Pillow fallback."""

    def _decode(self, jpegs: list[bytes]) -> list[torch.Tensor | None]:
        return [None] * len(jpegs)


def test_jpegs_the_device_refuses_get_pillows_pixels_frame_and_extras(tmp_path):
    model = ModelConfig(cache_dir=str(tmp_path))
    _, cpu = run_path(model, "cpu", on_encoder=False)
    chosen = extras()
    decode = DecodeImages(image_size_for(model.arch), MAX_PIXELS, 10**8, extras=chosen, jpeg_to_encoder=True)
    encoder = EncodeClip(model, device="cpu", max_pixels=MAX_PIXELS, extras=chosen)
    encoder.setup(WorkerState())
    encoder.jpeg_decoder = RefusingDevice(encoder.bundle.image_size, MAX_PIXELS, torch.device("cpu"), frames=True)
    decoded = decode(input_rows())
    assert decoded.column("jpeg").null_count == len(BAD_INPUTS) - 1  # all good JPEGs and CORRUPT_WITH_END passed
    encoded = encoder(decoded)
    for column in ("status", "error_code", "error_message", "pdq_hash", "pdq_quality"):
        assert encoded.column(column).to_pylist() == cpu.column(column).to_pylist(), column
    assert thumbnail_sizes(encoded) == thumbnail_sizes(cpu)
