"""A malformed hash list fails `clipline run` in the config check, before Ray starts, naming its line."""

from __future__ import annotations

import os

import yaml

from tests.jobs.test_cli import CLI, run

GOOD = "f8f8f0cce0f4e84d0e370a22028f67f0b36e2ed596623e1d33e6339c4e9c9b22"


def test_malformed_list_fails_before_ray_starts_naming_file_and_line(tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "known.csv").write_text(f"hash,label\n{GOOD},ok\n{GOOD[:-2]},short\n")
    categories = [{"name": "star", "positive": ["a star"], "negative": ["a circle"], "review_threshold": 0.5}]
    policy = {
        "name": "p",
        "version": "1",
        "categories": categories,
        "hash_lists": [{"name": "known", "uri": "lists/known.csv", "action": "block"}],
    }
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"source": {"paths": ["in/"]}, "policy": "policy.yaml", "sink": {"uri": "db"}}))
    ray_tmp = tmp_path / "ray-tmp"  # where a Ray started by this run would put its session
    result = run([*CLI, "run", str(job)], env={**os.environ, "RAY_TMPDIR": str(ray_tmp)})
    assert result.returncode == 2
    assert f"{lists / 'known.csv'}:3:" in result.stderr
    assert "62 characters" in result.stderr
    assert "Traceback" not in result.stderr
    assert not ray_tmp.exists()
    assert not (tmp_path / "db").exists()
