"""Per-batch transforms on Arrow tables, one per file, following the stage contract in `base.py`; no Ray."""
