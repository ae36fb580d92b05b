"""open_clip loading (hub tag, checkpoint file, bundled tiny CLIP) and embedding helpers."""
