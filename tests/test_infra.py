"""Deployment files agree with the code: image names, versions, entrypoints and config paths."""

from __future__ import annotations

import re
import shlex
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from clipline.jobs.run import build_parser
from clipline.schemas.config import load_job_config

ROOT = Path(__file__).parents[1]
K8S = ROOT / "infra" / "k8s"
DOCKERFILE = (ROOT / "infra" / "Dockerfile").read_text()
VERSION = version("clipline")
IMAGE = f"ghcr.io/clipline/clipline:{VERSION}"


def manifests() -> dict[str, dict]:
    return {path.name: yaml.safe_load(path.read_text()) for path in sorted(K8S.glob("*.yaml"))}


def containers(node) -> list[dict]:
    """Every container spec anywhere in a manifest."""
    found = []
    if isinstance(node, dict):
        found += [c for c in node.get("containers", []) if isinstance(c, dict)]
        for value in node.values():
            found += containers(value)
    elif isinstance(node, list):
        for value in node:
            found += containers(value)
    return found


def pinned(package: str) -> str:
    line = next(x for x in (ROOT / "constraints.txt").read_text().splitlines() if x.startswith(f"{package}=="))
    return line.split("==")[1]


def image_path_to_repo(path: str) -> Path:
    """Map /app/... inside the image back to the repo, using the Dockerfile's COPY lines."""
    assert path.startswith("/app/"), path
    relative = path.removeprefix("/app/")
    top = relative.split("/")[0]
    assert re.search(rf"^COPY .*\b{top}\b \./{top}$", DOCKERFILE, re.M), f"{top} is not copied into the image"
    return ROOT / relative


def check_entrypoint(argv: list[str]) -> None:
    """The command is our job entrypoint, its flags parse, and its config exists and validates."""
    assert argv[:3] == ["python", "-m", "clipline.jobs.run"]
    args = build_parser().parse_args(argv[3:])
    load_job_config(image_path_to_repo(args.config))


def test_every_manifest_uses_the_released_image():
    images = {c["image"] for doc in manifests().values() for c in containers(doc)}
    assert images == {IMAGE}


def test_dockerfile_base_image_matches_pinned_ray():
    assert f"FROM rayproject/ray:{pinned('ray')}-" in DOCKERFILE
    for name, doc in manifests().items():
        spec = doc["spec"]
        ray_version = spec.get("rayVersion") or spec.get("rayClusterSpec", {}).get("rayVersion")
        if doc["kind"] in {"RayCluster", "RayJob"}:
            assert ray_version == pinned("ray"), name


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_clusters_have_a_cpu_and_a_gpu_worker_group(name):
    doc = manifests()[name]
    spec = doc["spec"].get("rayClusterSpec", doc["spec"])
    groups = {group["groupName"]: group for group in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    gpu_limits = containers(groups["gpu"])[0]["resources"]["limits"]
    assert gpu_limits["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in containers(groups["cpu"])[0]["resources"]["limits"]
    for container in containers(doc):
        env = {item["name"] for item in container.get("env", [])}
        assert {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} <= env


def test_rayjob_entrypoint_is_the_cli_entrypoint():
    check_entrypoint(shlex.split(manifests()["rayjob.yaml"]["spec"]["entrypoint"]))


def test_cronjob_submits_the_entrypoint_without_overlap():
    doc = manifests()["cronjob.yaml"]
    assert doc["kind"] == "CronJob" and doc["spec"]["concurrencyPolicy"] == "Forbid"
    command = containers(doc)[0]["command"]
    assert command[:3] == ["ray", "job", "submit"]
    address = command[command.index("--address") + 1]
    cluster = manifests()["raycluster.yaml"]["metadata"]["name"]
    assert address == f"http://{cluster}-head-svc:8265"
    check_entrypoint(command[command.index("--") + 1 :])


@pytest.mark.parametrize("script", sorted((ROOT / "infra" / "local").glob("*.sh")), ids=lambda p: p.name)
def test_local_scripts_are_valid_bash(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
