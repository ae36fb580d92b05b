"""CLIP image and text embeddings from one model loaded once per actor.

Image rows are embedded from the decoder's uint8 pixels, or from JPEG bytes decoded here on the
encoder's device (`device_decode.py`) when the decode tasks passed them through (those rows also
get the per-image extras' columns here, from frames made on the device); text (captions
or text-only rows) from the tokenizer. Both are L2-normalised so a dot product is a cosine;
image–text pairs also get `clip_score`, the cosine between the two (DataComp's filtering signal).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import torch

from clipline.models.loader import ClipBundle, load_clip, pick_device
from clipline.models.zero_shot import encode_pixels, encode_texts, over_context, pixels_to_device
from clipline.operators.base import STATEFUL, Resources, WorkerState
from clipline.operators.columns import (
    add_flag,
    column_or_nulls,
    embedding_array,
    is_blank,
    mark_failed,
    ok_mask,
    set_column,
)
from clipline.operators.decode import FrameExtra, set_extra_columns
from clipline.operators.device_decode import DeviceJpegDecoder
from clipline.schemas.config import ModelConfig
from clipline.schemas.storage import StorageConfig

FLAG_TEXT_TRUNCATED = "text_truncated"


def torch_threads_for(cpus: float) -> int:
    """One torch thread per CPU the actor reserved: more would fight the decode tasks for cores."""
    return max(1, int(cpus))


class EncodeClip:
    """Adds `image_embedding`, `text_embedding` and `clip_score`; drops the `pixels` and `jpeg` columns.

    JPEGs that the decode tasks passed through as bytes in `jpeg` are decoded here, on the model's
    device, whatever the configuration said, so no row can pass with neither pixels nor a failure;
    `max_pixels` is the pixel limit for those the device refuses and Pillow decodes instead.
    `extras` are the decode stage's per-image extras: for the rows decoded here they fill the
    columns decode left null (null again where the JPEG failed).
    """

    name = "encode"

    def __init__(
        self,
        model: ModelConfig,
        cpus: float = 1.0,
        device: str | None = None,
        storage: StorageConfig | None = None,
        resources: Resources = STATEFUL,
        max_pixels: int = 64_000_000,
        extras: Sequence[FrameExtra] = (),
    ) -> None:
        self.model_config = model
        self.cpus = cpus
        self.device = device
        self.storage = storage or StorageConfig()
        self.resources = resources
        self.max_pixels = max_pixels
        self.extras = list(extras)
        self.bundle: ClipBundle | None = None
        self.jpeg_decoder: DeviceJpegDecoder | None = None

    def setup(self, state: WorkerState) -> None:
        """Load the model once per worker (into `state`, for the stages after this one); set torch threads."""
        torch.set_num_threads(torch_threads_for(self.cpus))
        reusable = state.clip is not None and state.clip.config == self.model_config
        if not reusable or state.clip.device != pick_device(self.device):
            state.clip = load_clip(self.model_config, self.device, self.storage)
        self.bundle = state.clip
        self.jpeg_decoder = DeviceJpegDecoder(
            self.bundle.image_size, self.max_pixels, self.bundle.device, frames=bool(self.extras)
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.bundle is None:
            raise RuntimeError("EncodeClip.setup() must run before the first batch")
        dim = self.bundle.embed_dim
        batch, image_rows, pixels = self._images(batch)
        ok = ok_mask(batch)
        texts = column_or_nulls(batch, "text", pa.string()).to_pylist()
        text_rows = ok & np.array([not is_blank(text) for text in texts], dtype=bool)
        image_vectors = encode_pixels(self.bundle, pixels)
        text_values = [texts[i] for i in np.flatnonzero(text_rows)]
        text_vectors = encode_texts(self.bundle, text_values)
        truncated = np.zeros(batch.num_rows, dtype=bool)
        truncated[np.flatnonzero(text_rows)] = over_context(self.bundle, text_values)
        batch = add_flag(batch, truncated, FLAG_TEXT_TRUNCATED)
        batch = set_column(batch, "image_embedding", embedding_array(image_vectors, image_rows, dim))
        batch = set_column(batch, "text_embedding", embedding_array(text_vectors, text_rows, dim))
        batch = set_column(batch, "clip_score", self._clip_scores(image_vectors, image_rows, text_vectors, text_rows))
        return batch.drop_columns([name for name in ("pixels", "jpeg") if name in batch.column_names])

    def _images(self, batch: pa.Table) -> tuple[pa.Table, np.ndarray, np.ndarray | torch.Tensor]:
        """The batch (JPEGs decoded here: failures marked, extras filled), the rows to embed, their pixels in row order.

        Without JPEGs to decode the pixels stay a numpy array (`encode_pixels` copies it to the
        device); with them, one (k, 3, H, W) tensor on the device holds both kinds of row.
        """
        ok = ok_mask(batch)
        decoded = ok & column_or_nulls(batch, "pixels", pa.binary()).is_valid().to_numpy(zero_copy_only=False)
        jpegs = column_or_nulls(batch, "jpeg", pa.binary())
        passed = ok & jpegs.is_valid().to_numpy(zero_copy_only=False)
        if self.jpeg_decoder is None or not passed.any():  # the decoder exists once setup() ran
            return batch, decoded, self._pixels(batch, decoded)
        rows = np.flatnonzero(decoded | passed)
        size = self.bundle.image_size
        pixels = torch.empty((len(rows), 3, size, size), dtype=torch.uint8, device=self.bundle.device)
        pixels[torch.from_numpy(np.searchsorted(rows, np.flatnonzero(decoded)))] = pixels_to_device(
            self.bundle, self._pixels(batch, decoded)
        )
        jpeg_rows = np.flatnonzero(passed)
        decoded_jpegs = self.jpeg_decoder([jpegs[int(row)].as_py() for row in jpeg_rows])
        pixels[torch.from_numpy(np.searchsorted(rows, jpeg_rows))] = decoded_jpegs.pixels
        failed = {
            int(jpeg_rows[i]): (failure.code.value, failure.message) for i, failure in decoded_jpegs.failures.items()
        }
        batch = mark_failed(batch, failed)
        frames = {int(jpeg_rows[i]): frame for i, frame in decoded_jpegs.frames.items()}
        batch = set_extra_columns(batch, self.extras, frames)
        kept = ~np.isin(rows, list(failed))
        image_rows = np.zeros(batch.num_rows, dtype=bool)
        image_rows[rows[kept]] = True
        return batch, image_rows, pixels[torch.from_numpy(kept).to(pixels.device)]

    def _pixels(self, batch: pa.Table, rows: np.ndarray) -> np.ndarray:
        """Selected rows' pixel bytes as one (n, H, W, 3) uint8 array, without per-row copies."""
        size = self.bundle.image_size
        if not rows.any():
            return np.zeros((0, size, size, 3), dtype=np.uint8)
        chosen = batch.column("pixels").combine_chunks().filter(pa.array(rows))
        raw = np.frombuffer(chosen.buffers()[1], dtype=np.uint8, offset=chosen.offset * size * size * 3)
        return raw[: len(chosen) * size * size * 3].reshape(len(chosen), size, size, 3)

    @staticmethod
    def _clip_scores(
        image_vectors: np.ndarray, image_rows: np.ndarray, text_vectors: np.ndarray, text_rows: np.ndarray
    ) -> pa.Array:
        """Image–text cosine for rows that have both, null elsewhere."""
        scores = np.full(len(image_rows), np.nan, dtype=np.float32)
        both = image_rows & text_rows
        image_index = np.cumsum(image_rows) - 1
        text_index = np.cumsum(text_rows) - 1
        rows = np.flatnonzero(both)
        scores[rows] = np.einsum("ij,ij->i", image_vectors[image_index[rows]], text_vectors[text_index[rows]])
        return pa.array(scores, pa.float32(), mask=~both)
