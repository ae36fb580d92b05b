"""Pydantic configs, the moderation policy and the output table schema; imports nothing of ours."""
