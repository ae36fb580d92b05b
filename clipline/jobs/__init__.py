"""Thin entrypoints: the CLI and `python -m clipline.jobs.run` for ray job submit."""
