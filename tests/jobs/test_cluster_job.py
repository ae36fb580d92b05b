"""`ray job submit` on a real two-node Ray cluster (head + worker on loopback, token auth)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import lancedb
import pyarrow.parquet as pq
import pytest
import yaml

from clipline.demo.demo import DEMO_POLICY, write_demo_input

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).parents[2]
SCRIPT = REPO / "infra" / "local" / "ray-cluster.sh"


# Runs with the cluster's token in its environment: the state API is authenticated too.
STATE_QUERY = """
import json, os, sys
from ray.util.state import list_actors, list_jobs, list_tasks
address = os.environ["RAY_ADDRESS"]
job = next(j for j in list_jobs(address=address) if j.submission_id == sys.argv[1])
actors = list_actors(address=address, filters=[("job_id", "=", job.job_id)])
nodes = [a.node_id for a in actors if "EncodeClassifyActor" in a.class_name]
tasks = list_tasks(address=address, filters=[("job_id", "=", job.job_id)], limit=10000)
writers = [t.node_id for t in tasks if "StagingSink" in t.name and t.state == "FINISHED"]
placed = sorted({(t.name, (t.node_id or "-")[:8], t.state) for t in tasks})
print(json.dumps({"status": str(job.status).rsplit(".", 1)[-1], "encoder_nodes": nodes, "writer_nodes": writers,
                  "placed": placed}))
"""


def submit_when_agent_ready(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """`ray job submit`, retried while the head's job agent is still registering after start-up."""
    deadline = time.time() + 300
    while True:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if "No available agent" not in result.stdout + result.stderr or time.time() > deadline:
            return result
        time.sleep(3)


def cluster_env(directory: Path) -> dict[str, str]:
    env = dict(os.environ)
    for line in (directory / "cluster.env").read_text().splitlines():
        key, value = line.removeprefix("export ").split("=", 1)
        env[key] = value
    return env


@pytest.fixture(scope="module")
def cluster():
    """Start the two-node cluster with the repo's script; stop exactly those nodes afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="clipline-rc-"))
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHON_BIN": sys.executable,
    }
    try:
        subprocess.run(["bash", str(SCRIPT), "start", str(directory), "2", "2"], env=env, check=True, timeout=300)
        yield cluster_env(directory) | {"PATH": env["PATH"]}
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(directory)], env=env, timeout=120)


def test_job_submit_runs_and_writes_on_both_nodes_and_commits_once(cluster, tmp_path):
    input_path = write_demo_input(tmp_path)
    rows_in = pq.read_metadata(input_path).num_rows
    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        yaml.safe_dump(
            {
                "source": {"paths": [str(input_path)]},
                "policy": str(DEMO_POLICY),
                # One encoder per node, so each node keeps CPU free for writers (the planner's
                # default, three encoders on four CPUs, can fill one node and leave it none).
                "resources": {"encoders": 2},
                "sink": {"uri": str(tmp_path / "db"), "commit_rows": 16},
            }
        )
    )
    submission = f"clipline-test-{uuid.uuid4().hex[:8]}"
    command = [
        "ray",
        "job",
        "submit",
        "--working-dir",
        str(REPO),
        "--submission-id",
        submission,
        "--",
        sys.executable,
        "-m",
        "clipline.jobs.run",
        "--config",
        str(job_file),
    ]
    result = submit_when_agent_ready(command, cluster)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert f"Job '{submission}' succeeded" in result.stdout + result.stderr

    table = lancedb.connect(str(tmp_path / "db")).open_table("media")
    ids = table.to_arrow().column("id").to_pylist()
    assert len(ids) == len(set(ids)) == rows_in
    assert table.version == 2  # created empty, then the run's one commit

    state = json.loads(
        subprocess.run(
            [sys.executable, "-c", STATE_QUERY, submission],
            env=cluster,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    assert state["status"] == "SUCCEEDED"
    assert len(set(state["encoder_nodes"])) == 2
    assert len(set(state["writer_nodes"])) == 2, state
