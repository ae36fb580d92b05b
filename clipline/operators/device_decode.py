"""Decode JPEGs inside the encoder actor, on its device, a batch at a time (torchvision; nvjpeg on CUDA).

With CPU decode tasks, every image crosses Ray's object store as model-sized pixels and a GPU
encoder waits on CPUs to decode for it. Here only the JPEG bytes travel: the decode tasks check
each header (size, pixel limit: `decode.jpeg_for_encoder`) and pass the bytes on, and the encoder
decodes the batch where it will be encoded, then resizes and crops there the way `decode.fit_square`
does on the CPU (shortest side to the model size, bicubic with antialiasing, centre crop, uint8).

Outcomes match the CPU path's: a JPEG the device cannot decode goes through Pillow
(`decode.decode_image`), which gives the same pixels, or the same error code and message, that
a CPU-decoded run gives. On a CPU-only worker the same code runs with device "cpu" (tests).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg

from clipline.operators.decode import RowFailure, decode_image

RESIZE_GROUP = 64


def fit_square_tensor(images: torch.Tensor, size: int) -> torch.Tensor:
    """(n, 3, H, W) uint8 → (n, 3, size, size) uint8: `decode.fit_square`'s resize and crop, on the images' device."""
    height, width = images.shape[-2:]
    short, long = sorted((width, height))
    scaled_long = int(size * long / short)
    new_width, new_height = (size, scaled_long) if width <= height else (scaled_long, size)
    resized = torch.nn.functional.interpolate(
        images.float(), size=(new_height, new_width), mode="bicubic", antialias=True, align_corners=False
    )
    left, top = round((new_width - size) / 2.0), round((new_height - size) / 2.0)
    return resized[..., top : top + size, left : left + size].round_().clamp_(0, 255).to(torch.uint8)


class DeviceJpegDecoder:
    """JPEG bytes → (n, 3, size, size) uint8 on `device`, plus the rows that failed and why."""

    def __init__(self, size: int, max_pixels: int, device: torch.device) -> None:
        self.size = size
        self.max_pixels = max_pixels
        self.device = device

    def __call__(self, jpegs: list[bytes]) -> tuple[torch.Tensor, dict[int, RowFailure]]:
        """Decode all of `jpegs` in one call; rows of a failed batch are retried alone, then through Pillow.

        The failed rows' slots in the tensor are left unset: the caller drops them.
        """
        pixels = torch.empty((len(jpegs), 3, self.size, self.size), dtype=torch.uint8, device=self.device)
        failures: dict[int, RowFailure] = {}
        images = self._decode(jpegs)
        same_size: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(images):
            if image is not None:
                same_size.setdefault(tuple(image.shape), []).append(index)
                continue
            try:
                pixels[index] = torch.from_numpy(decode_image(jpegs[index], self.size, self.max_pixels)).permute(
                    2, 0, 1
                )
            except RowFailure as failure:
                failures[index] = failure
        # Images of one size resize in one call (uploads from one app often are all one size), in
        # groups small enough that their float copies stay a few hundred MB.
        for indices in same_size.values():
            for start in range(0, len(indices), RESIZE_GROUP):
                group = indices[start : start + RESIZE_GROUP]
                resized = fit_square_tensor(torch.stack([images[index] for index in group]), self.size)
                pixels[torch.tensor(group, device=self.device)] = resized
        return pixels, failures

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
