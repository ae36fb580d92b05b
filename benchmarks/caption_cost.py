"""What one caption of several MB costs the encoder: tokenizing it whole vs cut to the context.

    python -m benchmarks.caption_cost [--mb 4] [--arch clipline-tiny]

Times `encode_texts` + `over_context` (what the encoder runs per text row) on one caption of
`--mb` megabytes, against the same model tokenizing the whole caption (the encoder before texts
were cut). Median of three; prints seconds and the tokenizer's input length.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from clipline.models.loader import load_clip
from clipline.models.zero_shot import encode_texts, over_context, tokenizer_input
from clipline.schemas.config import RANDOM_WEIGHTS, TINY_ARCH, ModelConfig


def seconds(function, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=4.0)
    parser.add_argument("--arch", default=TINY_ARCH)
    args = parser.parse_args(argv)
    pretrained = None if args.arch == TINY_ARCH else RANDOM_WEIGHTS
    bundle = load_clip(ModelConfig(arch=args.arch, pretrained=pretrained), device="cpu")
    caption = "a red star on a blue background, " * int(args.mb * 1024 * 1024 / 34)

    @torch.inference_mode()
    def whole() -> None:  # the tokenizer over every character, twice (embedding and the flag)
        bundle.model.encode_text(bundle.tokenizer([caption]))
        len(bundle.tokenizer.encode(caption))

    def cut() -> None:
        encode_texts(bundle, [caption])
        over_context(bundle, [caption])

    result = {
        "caption_bytes": len(caption.encode()),
        "tokenizer_input_chars": {"whole": len(caption), "cut": len(tokenizer_input(bundle, caption))},
        "seconds": {"whole": round(seconds(whole), 3), "cut": round(seconds(cut), 4)},
    }
    print(result)
    return result


if __name__ == "__main__":
    main()
