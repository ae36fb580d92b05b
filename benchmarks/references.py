"""What clipline is measured against: bare open_clip loops, and two tools as their documentation shows them.

- `bare_loop`: what a careful engineer writes without a pipeline; with `captions`, the same work
  clipline does on captioned rows (image and text towers, both normalised, `clip_score`), batch
  for batch.
- `lancedb_open_clip`: LanceDB's registered `open-clip` embedding function, filled by `table.add()`
  with image bytes, as LanceDB's multimodal docs show it.
- `ray_data_batch_inference`: Ray Data's batch-inference pattern for images: `read_parquet`, a
  per-row preprocessing `map`, `map_batches` with an actor class that loads the model once, and
  a write.

Every one runs the same model with the same weights: the peers get them as a local file passed
as open_clip's `pretrained` (open_clip loads a file path like a tag), so nothing is downloaded.
Peers keep their own defaults (LanceDB embeds image by image on a thread pool; Ray gives an actor
that reserves one CPU one torch thread): the point is what a user gets by following their docs.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import ray
import torch
from PIL import Image
from safetensors.torch import save_file

from clipline.models.loader import TINY_DIR, load_clip, weights_argument
from clipline.schemas.config import RANDOM_WEIGHTS, TINY_ARCH, ModelConfig


@dataclass(frozen=True)
class Timing:
    """Seconds end to end (model load included) and, where the tool lets it be told apart, without start-up."""

    end_to_end: float
    steady: float | None = None


@dataclass(frozen=True)
class ReferenceWeights:
    """How a tool that calls open_clip itself gets clipline's model: arch, `pretrained` argument, extra config."""

    arch: str
    pretrained: str
    config_file: str | None  # an architecture open_clip does not ship (the bundled tiny CLIP)

    @classmethod
    def write(cls, model: ModelConfig, directory: Path) -> ReferenceWeights:
        """Random-init weights are saved to a file once, so that every tool loads the very same tensors."""
        config_file = str(TINY_DIR / f"{TINY_ARCH}.json") if model.arch == TINY_ARCH else None
        if model.pretrained != RANDOM_WEIGHTS:
            return cls(model.arch, str(weights_argument(model)), config_file)
        path = directory / f"{model.arch}-random-init.safetensors"
        save_file({k: v.contiguous() for k, v in load_clip(model, "cpu").model.state_dict().items()}, path)
        return cls(model.arch, str(path), config_file)

    def register(self) -> None:
        if self.config_file:
            import open_clip

            open_clip.add_model_config(self.config_file)


def device_name() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@torch.inference_mode()
def bare_loop(model: ModelConfig, parquet: Path, batch_size: int, threads: int, captions: bool) -> Timing:
    """Pillow decode + open_clip preprocess + encode (+ the text tower and clip_score), no Ray, `threads` threads."""
    torch.set_num_threads(threads)
    table = pq.read_table(parquet, columns=["image", "text"] if captions else ["image"])
    images = table.column("image").to_pylist()
    texts = table.column("text").to_pylist() if captions else []
    started = time.perf_counter()
    bundle = load_clip(model)
    loop_started = time.perf_counter()
    for start in range(0, len(images), batch_size):
        pixels = torch.stack(
            [
                bundle.preprocess(Image.open(io.BytesIO(data)).convert("RGB"))
                for data in images[start : start + batch_size]
            ]
        ).to(bundle.device)
        with bundle.autocast():
            image_vectors = torch.nn.functional.normalize(bundle.model.encode_image(pixels).float(), dim=-1)
            if captions:
                tokens = bundle.tokenizer(texts[start : start + batch_size]).to(bundle.device)
                text_vectors = torch.nn.functional.normalize(bundle.model.encode_text(tokens).float(), dim=-1)
                (image_vectors * text_vectors).sum(dim=-1).cpu().numpy()
                text_vectors.cpu().numpy()
        image_vectors.cpu().numpy()
    finished = time.perf_counter()
    return Timing(finished - started, finished - loop_started)


def lancedb_open_clip(weights: ReferenceWeights, parquet: Path, db: Path, batch_size: int) -> Timing:
    """LanceDB's `open-clip` embedding function on `add()`; steady = the `add()` alone, without the model build."""
    import lancedb
    from lancedb.embeddings import get_registry
    from lancedb.pydantic import LanceModel, Vector

    rows = pq.read_table(parquet, columns=["id", "image"])
    weights.register()
    started = time.perf_counter()
    clip = (
        get_registry()
        .get("open-clip")
        .create(name=weights.arch, pretrained=weights.pretrained, batch_size=batch_size, device=device_name())
    )

    class Images(LanceModel):
        id: str
        image: bytes = clip.SourceField()
        vector: Vector(clip.ndims()) = clip.VectorField()  # type: ignore[valid-type]

    table = lancedb.connect(str(db)).create_table("images", schema=Images)
    add_started = time.perf_counter()
    table.add(rows)
    finished = time.perf_counter()
    if table.count_rows() != rows.num_rows:
        raise RuntimeError(f"LanceDB peer wrote {table.count_rows()} rows of {rows.num_rows}")
    return Timing(finished - started, finished - add_started)


class OpenClipPredictor:
    """The actor of Ray Data's batch-inference docs: load the model in `__init__`, run it in `__call__`."""

    def __init__(self, weights: ReferenceWeights) -> None:
        import open_clip

        weights.register()
        self.device = device_name()
        self.model = open_clip.create_model(weights.arch, pretrained=weights.pretrained, device=self.device).eval()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            features = self.model.encode_image(torch.as_tensor(batch["pixels"], device=self.device))
            embeddings = torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()
        return {"id": batch["id"], "embedding": embeddings}


def preprocess_row(transform: Callable) -> Callable[[dict], dict]:
    """The docs' per-row preprocessing: decode and transform to the model's float input."""

    def preprocess(row: dict) -> dict:
        return {"id": row["id"], "pixels": transform(Image.open(io.BytesIO(row["image"])).convert("RGB")).numpy()}

    return preprocess


def ray_data_batch_inference(
    weights: ReferenceWeights, transform: Callable, parquet: Path, out: Path, batch_size: int
) -> Timing:
    """read_parquet → map(preprocess) → map_batches(actor, one actor) → write_parquet, timed end to end."""
    started = time.perf_counter()
    (
        ray.data.read_parquet(str(parquet), columns=["id", "image"])
        .map(preprocess_row(transform))
        .map_batches(
            OpenClipPredictor,
            fn_constructor_kwargs={"weights": weights},
            concurrency=1,
            batch_size=batch_size,
            num_gpus=1 if torch.cuda.is_available() else 0,
        )
        .write_parquet(str(out))
    )
    finished = time.perf_counter()
    written = pq.read_table(out, columns=["id"]).num_rows
    if written != pq.ParquetFile(parquet).metadata.num_rows:
        raise RuntimeError(f"Ray Data peer wrote {written} rows")
    return Timing(finished - started)
