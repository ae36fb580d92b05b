"""clipline: batch CLIP embedding and zero-shot moderation with Ray Data, open_clip and LanceDB."""

__version__ = "0.1.0"
