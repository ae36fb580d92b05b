"""Decode JPEGs inside the encoder actor, on its device, a batch at a time (torchvision; nvjpeg on CUDA).

With CPU decode tasks, every image crosses Ray's object store as model-sized pixels and a GPU
encoder waits on CPUs to decode for it. Here only the JPEG bytes travel: the decode tasks check
each header (size, pixel limit, JPEG scans, decoder budget: `decode.jpeg_for_encoder`) and pass the
bytes on, and the encoder decodes the batch where it will be encoded, then resizes and crops there
the way `decode.fit_square` does on the CPU (shortest side to the model size, bicubic with
antialiasing, centre crop, uint8).

Per-image extras (PDQ, thumbnails) need the whole frame, which decode tasks make for the images
they decode. For the JPEGs decoded here the frame is made here too, from the decoded image while it
is on the device: box-reduced by `resample.frame_factor` exactly as Pillow's `Image.reduce` does
(same sums, same fixed-point rounding), so only the small frame (long side <= 500 px for ordinary
shapes) is copied to the CPU, where the extras run on it as they would in a decode task.

Outcomes match the CPU path's: a JPEG the device cannot decode goes through Pillow
(`decode.decode_frame`), which gives the same pixels and frame, or the same error code and
message, that a CPU-decoded run gives. On a CPU-only worker the same code runs with device "cpu"
(tests).
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from clipline.operators.decode import RowFailure, decode_frame
from clipline.operators.resample import frame_factor

RESIZE_GROUP = 64
# A group's float copy (4 bytes per channel) stays under this: 64 phone photos, or 3 of 12 MP.
GROUP_FLOAT_BYTES = 512 * 1024 * 1024


def group_length(shape: tuple[int, ...]) -> int:
    """How many same-size images (shape (3, H, W)) resize together: RESIZE_GROUP, fewer when they are large."""
    return max(1, min(RESIZE_GROUP, GROUP_FLOAT_BYTES // (4 * math.prod(shape))))


def fit_square_tensor(images: torch.Tensor, size: int) -> torch.Tensor:
    """(n, 3, H, W) uint8 or float → (n, 3, size, size) uint8: `decode.fit_square`'s resize and crop, same device."""
    height, width = images.shape[-2:]
    short, long = sorted((width, height))
    scaled_long = int(size * long / short)
    new_width, new_height = (size, scaled_long) if width <= height else (scaled_long, size)
    resized = torch.nn.functional.interpolate(
        images.float(), size=(new_height, new_width), mode="bicubic", antialias=True, align_corners=False
    )
    left, top = round((new_width - size) / 2.0), round((new_height - size) / 2.0)
    return resized[..., top : top + size, left : left + size].round_().clamp_(0, 255).to(torch.uint8)


def _box_counts(length: int, factor: int, device: torch.device) -> torch.Tensor:
    """Pixels in each box along one side: `factor`, and what is left for the last box."""
    boxes = math.ceil(length / factor)
    counts = torch.full((boxes,), factor, dtype=torch.int64, device=device)
    counts[-1] = length - factor * (boxes - 1)
    return counts


def box_reduce(images: torch.Tensor, factor: int) -> torch.Tensor:
    """(n, 3, H, W) uint8 or float → (n, 3, ceil(H/f), ceil(W/f)) uint8, equal to Pillow's `Image.reduce(f)`.

    Each output pixel is its box's mean, edge boxes averaging the pixels they have; the division
    repeats Pillow's fixed-point one (`(sum + count // 2) * (2**32 / (256 * count) in float32) >> 24`),
    which rounds a few means a unit lower than exact rounding would, so the frame, and every
    extra computed from it, is the CPU path's. Sums are exact in float32 (< 2**24 up to 256 x 256 boxes).
    """
    if factor == 1:
        return images.to(torch.uint8)
    sums = torch.nn.functional.avg_pool2d(images.float(), factor, factor, ceil_mode=True, divisor_override=1)
    height, width = images.shape[-2:]
    counts = _box_counts(height, factor, images.device)[:, None] * _box_counts(width, factor, images.device)[None, :]
    multiplier = (torch.tensor(2.0**32, device=images.device) / (256 * counts).float()).long()
    return (((sums.long() + counts // 2) * multiplier) >> 24).to(torch.uint8)


def frames_on_cpu(images: torch.Tensor) -> list[Image.Image]:
    """Same-size decoded images → their whole frames (RGB, reduced by `frame_factor`) as small CPU images."""
    height, width = images.shape[-2:]
    reduced = box_reduce(images, frame_factor(width, height)).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(frame) for frame in reduced]


class DeviceBatch(NamedTuple):
    """One call's results, by position in its list of JPEGs."""

    pixels: torch.Tensor  # (n, 3, size, size) uint8 on the device; failed rows' slots are left unset
    failures: dict[int, RowFailure]
    frames: dict[int, Image.Image]  # the whole frame of each decoded row, when the decoder makes frames


class DeviceJpegDecoder:
    """JPEG bytes → (n, 3, size, size) uint8 on `device`, the rows that failed and why, and (`frames`) whole frames.

    Memory: the batch's decoded images are on the device together (one batched decode call); each
    is dropped once its group of same-size images is resized and reduced, and only its frame
    reaches the CPU.
    """

    def __init__(self, size: int, max_pixels: int, device: torch.device, frames: bool = False) -> None:
        self.size = size
        self.max_pixels = max_pixels
        self.device = device
        self.frames = frames

    def __call__(self, jpegs: list[bytes]) -> DeviceBatch:
        """Decode all of `jpegs` in one call; rows of a failed batch are retried alone, then through Pillow."""
        result = DeviceBatch(
            torch.empty((len(jpegs), 3, self.size, self.size), dtype=torch.uint8, device=self.device), {}, {}
        )
        images = self._decode(jpegs)
        same_size: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(images):
            if image is not None:
                same_size.setdefault(tuple(image.shape), []).append(index)
            else:
                self._on_cpu(jpegs[index], index, result)
        # Images of one size resize in one call (uploads from one app often are all one size), in
        # groups small enough that their float copies stay a few hundred MB.
        for shape, indices in same_size.items():
            step = group_length(shape)
            for start in range(0, len(indices), step):
                group = indices[start : start + step]
                self._fit_group(torch.stack([images[index] for index in group]), group, result)
                for index in group:
                    images[index] = None
        return result

    def _fit_group(self, images: torch.Tensor, group: list[int], result: DeviceBatch) -> None:
        """Model pixels (and frames) of same-size images, from one float copy of them."""
        floats = images.float()
        result.pixels[torch.tensor(group, device=self.device)] = fit_square_tensor(floats, self.size)
        if self.frames:
            result.frames.update(zip(group, frames_on_cpu(floats), strict=True))

    def _on_cpu(self, jpeg: bytes, index: int, result: DeviceBatch) -> None:
        """A JPEG the device refused: Pillow's pixels and frame, or its failure."""
        try:
            decoded = decode_frame(jpeg, self.size, self.max_pixels)
        except RowFailure as failure:
            result.failures[index] = failure
            return
        result.pixels[index] = torch.tensor(decoded.pixels).permute(2, 0, 1)  # a copy: Pillow's array is read-only
        if self.frames:
            result.frames[index] = decoded.frame

    def _decode(self, jpegs: list[bytes]) -> list[torch.Tensor | None]:
        """Every image decoded to RGB on the device, or None where the device decoder refused it."""
        if not jpegs:
            return []
        data = [torch.from_numpy(np.frombuffer(jpeg, dtype=np.uint8).copy()) for jpeg in jpegs]
        with warnings.catch_warnings():  # torchvision 0.29 marks its image codecs deprecated on every call
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device))
            except RuntimeError:  # one bad image fails the whole batch call: retry one by one
                return [self._decode_one(one) for one in data]

    def _decode_one(self, data: torch.Tensor) -> torch.Tensor | None:
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            return None
