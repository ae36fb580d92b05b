"""Run manifests and reports: what a run did, stored next to its table, at a glance, with pictures.

`write_run_artifacts` is called by the pipeline once a run's rows are committed; `report_for_run`
renders the report of any recorded run again (the `clipline report` verb).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from clipline.operators.sink import open_existing_table
from clipline.reports.manifest import (
    ManifestStore,
    build_manifest,
    manifest_json,
    scan_run_rows,
    score_drift,
    stage_stats,
)
from clipline.reports.report import MAX_THUMBNAILS, build_report
from clipline.schemas.config import JobConfig
from clipline.schemas.policy import Policy, load_policy
from clipline.schemas.storage import StorageConfig

if TYPE_CHECKING:
    from clipline.pipelines.embed import RunSummary

__all__ = ["RunArtifacts", "report_for_run", "write_run_artifacts"]


@dataclass(frozen=True)
class RunArtifacts:
    """Where a run's manifest and report were written, and the manifest itself."""

    manifest_uri: str
    report_uri: str
    manifest: dict


def open_table(db_uri: str, table: str, storage: StorageConfig) -> Any:
    import lancedb

    db = lancedb.connect(db_uri, storage_options=storage.lance_options(db_uri) or None)
    found = open_existing_table(db, table)
    if found is None:
        raise ValueError(f"no table {table!r} in {db_uri}")
    return found


def write_run_artifacts(
    summary: RunSummary,
    config: JobConfig,
    dataset_stats: Any = None,
    storage: StorageConfig | None = None,
    policy: Policy | None = None,
    max_thumbnails: int = MAX_THUMBNAILS,
) -> RunArtifacts:
    """Write `{sink.uri}/_clipline/runs/{table}/{run_id}.json` and `.html` after the table commit.

    `dataset_stats` is the iterated Ray `Dataset` or its `get_stats_summary()` (None: no stage
    timings). `policy` is the one the run scored with (default: loaded again from `config.policy`).
    The manifest is written before the report, so a report that fails still leaves the record.
    """
    storage = storage or config.storage
    if policy is None and config.policy:
        policy = load_policy(config.policy)
    table = open_table(config.sink.uri, config.sink.table, storage)
    store = ManifestStore(config.sink.uri, config.sink.table, storage)
    manifest = build_manifest(summary, config, policy, stage_stats(dataset_stats), scan_run_rows(table, summary.run_id))
    previous = store.previous(summary.run_id)
    manifest["drift"] = score_drift(manifest, previous)
    manifest_uri = store.write(summary.run_id, "json", manifest_json(manifest))
    page = build_report(table, manifest, previous, storage, max_thumbnails)
    report_uri = store.write(summary.run_id, "html", page.encode())
    return RunArtifacts(manifest_uri=manifest_uri, report_uri=report_uri, manifest=manifest)


def report_for_run(
    db_uri: str,
    table: str,
    run_id: str | None = None,
    storage: StorageConfig | None = None,
    max_thumbnails: int = MAX_THUMBNAILS,
) -> tuple[dict, str]:
    """(manifest, report HTML) of `run_id`, or of the latest run with a manifest."""
    storage = storage or StorageConfig()
    store = ManifestStore(db_uri, table, storage)
    if run_id is None:
        runs = store.run_ids()
        if not runs:
            raise ValueError(f"no run manifests for table {table!r} in {db_uri}")
        run_id = runs[-1]
    manifest = store.read(run_id)
    if manifest is None:
        known = ", ".join(store.run_ids()[-5:]) or "none"
        raise ValueError(f"no manifest for run {run_id!r} of table {table!r} (latest runs: {known})")
    previous_id = (manifest.get("drift") or {}).get("previous_run_id")
    previous = store.read(previous_id) if previous_id else None
    page = build_report(open_table(db_uri, table, storage), manifest, previous, storage, max_thumbnails)
    return manifest, page
