"""A decompression bomb is refused from its header: measured in a fresh process, peak RSS barely moves."""

from __future__ import annotations

import json
import subprocess
import sys

MEASURE = """
import json, resource
from clipline.operators.decode import RowFailure, decode_image
from tests.operators.images import png_with_declared_size
bomb = png_with_declared_size(60_000, 60_000)   # 3.6 G pixels declared, ~100 bytes on disk
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    decode_image(bomb, 224, max_pixels=64_000_000)
    code = None
except RowFailure as failure:
    code = failure.code.value
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"code": code, "extra_kib": after - before, "bytes": len(bomb)}))
"""


def test_bomb_is_rejected_before_decode_with_little_memory():
    result = subprocess.run([sys.executable, "-c", MEASURE], capture_output=True, text=True, timeout=120, check=True)
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["code"] == "image_too_large"
    assert measured["bytes"] < 1024
    assert measured["extra_kib"] < 100 * 1024, measured
    print(f"bomb: {measured['bytes']} bytes, peak RSS +{measured['extra_kib']} KiB")
