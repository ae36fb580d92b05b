"""`clipline report` as a user runs it: a subprocess writing one HTML file, exit code 2 for a missing run."""

from __future__ import annotations

import subprocess
import sys

from clipline.jobs.cli import main
from clipline.reports import write_run_artifacts
from tests.reports.synthetic import scored_rows, write_run

CLI = [sys.executable, "-m", "clipline.jobs.cli"]


def test_report_verb_writes_the_latest_run_and_names_a_missing_one(tmp_path, capsys):
    db = tmp_path / "db"
    for run_id, seed in (("run-a", 1), ("run-b", 2)):
        write_run_artifacts(*write_run(db, tmp_path / "in", run_id, scored_rows(8, seed=seed)))
    out = tmp_path / "latest.html"
    result = subprocess.run(
        [*CLI, "report", "--db", str(db), "--table", "media", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "run-b" in result.stdout and "clipline run run-b" in out.read_text()
    assert "Compared with run <code>run-a</code>" in out.read_text()
    # The error path in-process (the import alone costs a subprocess ~10 s on a busy machine).
    assert main(["report", "--db", str(db), "--table", "media", "--run", "zzz", "--out", str(tmp_path / "x.html")]) == 2
    error = capsys.readouterr().err
    assert "no manifest for run 'zzz'" in error and "run-b" in error
    assert not (tmp_path / "x.html").exists()
