"""open_clip loading (hub tag, checkpoint file, bundled tiny CLIP), the prompt cache, zero-shot maths."""
