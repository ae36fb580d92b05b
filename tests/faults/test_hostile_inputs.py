"""Hostile uploads through the real pipeline on Ray: every URI trick and every expensive image, one run.

The input directory allows `image_uri` values under it (the default policy); next to it lies an
`outside/` directory with a canary PNG that would decode fine and whose hash is known, and a
loopback HTTP server serving the same canary. Every trick to reach them must come out as a
`failed` row with `uri_not_allowed`, no row may carry a canary's hash, and the server must see no
request. Expensive images (extreme aspect ratios both ways, 16-bit, large CMYK, header bombs) get
their codes; their peak decode memory is measured per kind in a fresh process below.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from benchmarks import hostile_corpus
from benchmarks.decode_memory import measure
from clipline.pipelines.run import run_job
from clipline.schemas.config import JobConfig
from tests.loopback import serving

BUDGET_MIB = 256
NOT_ALLOWED = ("failed", "uri_not_allowed")
BAD_ASPECT = ("failed", "image_bad_aspect")
TOO_LARGE = ("failed", "image_too_large")
OK = ("ok", None)
CAPTION_MB = 4


@dataclass(frozen=True)
class Row:
    kind: str
    row: dict
    outcome: tuple[str, str | None]


class Recorder(http.server.BaseHTTPRequestHandler):
    """Serves the canary to anyone who asks, and remembers who asked."""

    hits: ClassVar[list[str]] = []
    canary: ClassVar[bytes] = b""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        Recorder.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.canary)))
        self.end_headers()
        self.wfile.write(self.canary)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def noise(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def web():
    with serving(Recorder) as port:
        yield port


def uri_rows(root: Path, port: int) -> list[Row]:
    """The input's image directory with every trap in it, the outside canary, and the URIs to try."""
    images, outside = root / "in" / "images", root / "outside"
    images.mkdir(parents=True)
    outside.mkdir()
    (outside / "canary.png").write_bytes(Recorder.canary)
    (images / "good.png").write_bytes(png(noise(96, 80, 1)))
    os.symlink(outside / "canary.png", images / "link_out.png")
    os.symlink("../../outside/canary.png", images / "relative_link_out.png")
    os.symlink(outside, images / "link_dir")
    os.symlink("/dev/zero", images / "zero.png")
    os.symlink("/proc/self/environ", images / "environ.png")
    os.mkfifo(images / "fifo.png")
    uris = {
        "uri-inside": (str(images / "good.png"), OK),
        "uri-inside-file-url": (f"file://{images}/good.png", OK),
        "uri-inside-missing": (str(images / "missing.png"), ("failed", "uri_not_found")),
        "uri-dotdot": (f"{images}/../../outside/canary.png", NOT_ALLOWED),
        "uri-dotdot-encoded": (f"file://{images}/%2e%2e/%2e%2e/outside/canary.png", NOT_ALLOWED),
        "uri-symlink-out": (str(images / "link_out.png"), NOT_ALLOWED),
        "uri-relative-symlink-out": (str(images / "relative_link_out.png"), NOT_ALLOWED),
        "uri-symlinked-dir-out": (str(images / "link_dir" / "canary.png"), NOT_ALLOWED),
        "uri-symlink-dev-zero": (str(images / "zero.png"), NOT_ALLOWED),
        "uri-symlink-proc": (str(images / "environ.png"), NOT_ALLOWED),
        "uri-fifo": (str(images / "fifo.png"), NOT_ALLOWED),
        "uri-directory": (str(images), NOT_ALLOWED),
        "uri-file-url-outside": (f"file://{outside}/canary.png", NOT_ALLOWED),
        "uri-outside": (str(outside / "canary.png"), NOT_ALLOWED),
        "uri-outside-missing": (str(outside / "no-such.png"), NOT_ALLOWED),
        "uri-etc-passwd": ("/etc/passwd", NOT_ALLOWED),
        "uri-proc-environ": ("/proc/self/environ", NOT_ALLOWED),
        "uri-dev-zero": ("/dev/zero", NOT_ALLOWED),
        "uri-relative": ("images/good.png", NOT_ALLOWED),
        "uri-loopback-http": (f"http://127.0.0.1:{port}/canary.png", NOT_ALLOWED),
        "uri-metadata-http": ("http://169.254.169.254/latest/meta-data/", NOT_ALLOWED),
        "uri-other-scheme": (f"simplecache::file://{outside}/canary.png", NOT_ALLOWED),
    }
    return [Row(kind, {"image_uri": uri}, outcome) for kind, (uri, outcome) in uris.items()]


def image_rows() -> list[Row]:
    """Expensive images: the corpus's kinds, and aspect ratios either side of the limit both ways."""
    kinds = [
        "png_wide_4000x1",
        "png_wide_30000x1",
        "png_wide_60000x1",
        "png_wide_20000x3",
        "png_tall_1x30000",
        "png_tall_3x20000",
        "jpeg_wide_65000x8",
        "png16_grey_4000",
        "png16_la_4000",
        "png16_grey_8000",
        "png16_rgba_max",
        "jpeg_cmyk_max",
        "jpeg_cmyk_progressive_max",
        "bomb_png_header_60000",
    ]
    rows = [Row(kind, {"image": hostile_corpus.build(kind)}, expected(kind)) for kind in kinds]
    for width, height, outcome in [(2000, 100, OK), (100, 2000, OK), (210, 10, BAD_ASPECT), (10, 210, BAD_ASPECT)]:
        image = Image.new("RGB", (width, height), (40, 160, 90))
        rows.append(Row(f"aspect-{width}x{height}", {"image": png(image)}, outcome))
    return rows


def expected(kind: str) -> tuple[str, str | None]:
    outcome = hostile_corpus.OUTCOMES[kind]
    return OK if outcome == "ok" else ("failed", outcome)


def text_rows() -> list[Row]:
    caption = "a red star on a blue background, " * (CAPTION_MB * 1024 * 1024 // 33)
    return [
        Row("caption-megabytes", {"text": caption}, OK),
        Row("caption-blank", {"text": " \t\r\n\u00a0"}, ("failed", "missing_content")),
    ]


@pytest.mark.ray
def test_hostile_corpus_through_the_pipeline(ray_local, tmp_path, web):
    Recorder.canary = png(noise(64, 64, 99))  # decodes fine: a row that read it would be "ok"
    Recorder.hits.clear()
    cases = uri_rows(tmp_path, web) + image_rows() + text_rows()
    schema = pa.schema([("id", pa.string()), ("image", pa.binary()), ("image_uri", pa.string()), ("text", pa.string())])
    table = pa.Table.from_pylist([{"id": case.kind, **case.row} for case in cases], schema=schema)
    pq.write_table(table, tmp_path / "in" / "hostile.parquet", row_group_size=6)
    config = JobConfig.model_validate(
        {"source": {"paths": [str(tmp_path / "in" / "hostile.parquet")]}, "sink": {"uri": str(tmp_path / "db")}}
    )

    summary = run_job(config)

    rows = lancedb.connect(str(tmp_path / "db")).open_table("media").to_arrow().to_pylist()
    assert summary.rows_in == len(rows) == len(cases)
    by_id = {row["id"]: row for row in rows}
    assert len(by_id) == len(cases)
    for case in cases:
        row = by_id[case.kind]
        assert (row["status"], row["error_code"]) == case.outcome, (case.kind, row["error_message"])
        assert row["status"] == "ok" or row["error_message"], case.kind

    canaries = {hashlib.sha256(data).hexdigest() for data in (Recorder.canary, Path("/etc/passwd").read_bytes())}
    assert not canaries & {row["content_sha256"] for row in rows}
    assert Recorder.hits == []  # the loopback server was never asked
    refusals = {
        by_id[kind]["error_message"].replace(by_id[kind]["image_uri"], "<uri>")
        for kind in ("uri-outside", "uri-outside-missing", "uri-etc-passwd")
    }
    assert len(refusals) == 1  # a refusal never says whether the target exists

    caption = by_id["caption-megabytes"]
    assert caption["flags"] == ["text_truncated"] and caption["text_embedding"] is not None
    assert len(caption["text"]) == len(text_rows()[0].row["text"])  # stored whole
    assert by_id["png16_grey_8000"]["image_embedding"] is not None and by_id["jpeg_cmyk_max"]["image_embedding"]


MEMORY_KINDS = [
    "png_wide_60000x1",
    "png16_grey_8000",
    "png16_rgba_max",
    "png_rgba_max",
    "jpeg_cmyk_max",
    "jpeg_cmyk_progressive_max",
    "jpeg_progressive_max",
    "tiff_deflate_at_budget",
    "bmp_rle8_max",
    "gif_screen_lies_8000",
]


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory) -> dict[str, Path]:
    return hostile_corpus.write_all(tmp_path_factory.mktemp("hostile"), MEMORY_KINDS)


@pytest.mark.parametrize("kind", MEMORY_KINDS)
def test_decoding_one_hostile_image_stays_within_the_budget(corpus_files, kind):
    """Peak RSS above the worker's baseline, in a fresh process, for the pixels and the whole frame."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak RSS counter")
    result = measure(corpus_files[kind], 224, cap_bytes=2 * 1024**3)
    assert result["outcome"] == hostile_corpus.OUTCOMES[kind], result
    assert result["peak_mib"] < BUDGET_MIB, json.dumps(result)
