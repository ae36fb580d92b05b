"""Moderation on a table's stored embeddings: calibrate thresholds, rescore, trained heads, human review."""
