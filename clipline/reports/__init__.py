"""Run manifests and reports: what a run did, stored next to its table, at a glance, with pictures.

`write_run_artifacts` is called by the job entrypoints once a run's rows are committed (the run
itself never imports this package); `report_for_run` renders the report of any recorded run again
(the `clipline report` verb).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from clipline.pipelines.summary import RunSummary
from clipline.reports.manifest import ManifestStore, build_manifest, manifest_json, scan_run_rows, score_drift
from clipline.reports.report import MAX_THUMBNAILS, build_report
from clipline.schemas.config import JobConfig
from clipline.schemas.policy import Policy, load_policy
from clipline.schemas.storage import StorageConfig
from clipline.table.store import ClipTable

__all__ = ["RunArtifacts", "record_run", "report_for_run", "write_run_artifacts"]


@dataclass(frozen=True)
class RunArtifacts:
    """Where a run's manifest and report were written, and the manifest itself."""

    manifest_uri: str
    report_uri: str
    manifest: dict


def write_run_artifacts(
    summary: RunSummary,
    config: JobConfig,
    storage: StorageConfig | None = None,
    policy: Policy | None = None,
    max_thumbnails: int = MAX_THUMBNAILS,
) -> RunArtifacts:
    """Write `<run_id>.json` and `.html` under `Sidecars.runs(table)` after the table commit.

    `policy` is the one the run scored with (default: loaded again from `config.policy`).
    The manifest is written before the report, so a report that fails still leaves the record.
    """
    storage = storage or config.storage
    if policy is None and config.policy:
        policy = load_policy(config.policy, storage)
    table = ClipTable.open(config.sink.uri, config.sink.table, storage).lance
    store = ManifestStore(config.sink.uri, config.sink.table, storage)
    manifest = build_manifest(summary, config, policy, scan_run_rows(table, summary.run_id))
    previous = store.previous(summary.run_id)
    manifest["drift"] = score_drift(manifest, previous)
    manifest_uri = store.write(summary.run_id, "json", manifest_json(manifest))
    page = build_report(table, manifest, previous, storage, max_thumbnails)
    report_uri = store.write(summary.run_id, "html", page.encode())
    return RunArtifacts(manifest_uri=manifest_uri, report_uri=report_uri, manifest=manifest)


def record_run(summary: RunSummary, config: JobConfig, policy: Policy | None = None) -> RunSummary:
    """Write a finished run's manifest and report and note where on the summary.

    The rows are committed by then: a manifest or report that cannot be written is a warning, never
    a failed run (a scheduler would retry a run whose work is already done).
    """
    try:
        artifacts = write_run_artifacts(summary, config, policy=policy)
    except Exception as exc:
        warnings.warn(f"run {summary.run_id}: manifest/report not written: {type(exc).__name__}: {exc}", stacklevel=2)
        return summary
    summary.manifest_uri, summary.report_uri = artifacts.manifest_uri, artifacts.report_uri
    return summary


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
    page = build_report(ClipTable.open(db_uri, table, storage).lance, manifest, previous, storage, max_thumbnails)
    return manifest, page
