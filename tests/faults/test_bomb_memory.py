"""A decompression bomb is refused from its header by clipline's own limit: measured in a fresh process.

The declared size (36 M pixels) is far below Pillow's own bomb limit (89 M pixels warns, 179 M
raises), and the job's `max_image_pixels` is set to 1 M: only clipline's check can refuse it.
Without that check Pillow would allocate the 144 MB image and fail on the missing data.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
DECLARED = (6_000, 6_000)
MAX_PIXELS = 1_000_000

MEASURE = f"""
import json
from clipline.operators.decode import RowFailure, decode_image
from tests.operators.images import png_with_declared_size

def status(key):
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(key))

bomb = png_with_declared_size(*{DECLARED!r})
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")   # reset the peak (VmHWM) to the current RSS
before = status("VmRSS")
try:
    decode_image(bomb, 224, max_pixels={MAX_PIXELS})
    code = None
except RowFailure as failure:
    code = failure.code.value
print(json.dumps({{"code": code, "extra_kib": status("VmHWM") - before, "bytes": len(bomb)}}))
"""


def test_bomb_is_refused_by_cliplines_limit_with_little_memory():
    assert DECLARED[0] * DECLARED[1] < Image.MAX_IMAGE_PIXELS  # Pillow alone would not refuse it
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak RSS counter")
    result = subprocess.run(
        [sys.executable, "-c", MEASURE], capture_output=True, text=True, timeout=120, check=True, cwd=REPO
    )
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["code"] == "image_too_large"
    assert measured["bytes"] < 1024
    assert measured["extra_kib"] < 16 * 1024, measured
    print(f"bomb: {measured['bytes']} bytes, peak RSS +{measured['extra_kib']} KiB")
