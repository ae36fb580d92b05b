"""The `clipline` command as a user runs it: a subprocess, real exit codes, real output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

CLI = [sys.executable, "-m", "clipline.jobs.cli"]


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=300, **kwargs)


def test_help_lists_the_verbs():
    result = run([*CLI, "--help"])
    assert result.returncode == 0
    for verb in ("run", "demo", "search"):
        assert verb in result.stdout


def bad_job(tmp_path: Path) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "source": {"paths": ["in.parquet"]},
                "policy": "p.yaml",
                "sink": {"uri": "db", "table": "media", "comit_rows": 5},
            }
        )
    )
    return path


def test_bad_config_fails_before_ray_starts_and_names_the_field(tmp_path):
    for command in (
        [*CLI, "run", str(bad_job(tmp_path))],
        [sys.executable, "-m", "clipline.jobs.run", "--config", str(bad_job(tmp_path))],
    ):
        result = run(command)
        assert result.returncode == 2
        assert "sink.comit_rows" in result.stderr
        assert "Ray" not in result.stdout + result.stderr


def test_missing_input_is_reported_without_a_traceback(tmp_path):
    policy = Path(__file__).parents[2] / "clipline" / "demo" / "tiny" / "demo_policy.yaml"
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"source": {"paths": ["missing/"]}, "policy": str(policy), "sink": {"uri": "db"}}))
    result = run([*CLI, "run", str(path)])
    assert result.returncode == 2
    assert "source.paths" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
