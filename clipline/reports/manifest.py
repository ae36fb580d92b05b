"""The run manifest: one JSON record per run id, stored next to the table, read by reports and people.

It is written once, at the end of a run, from three sources: the driver's `RunSummary` (what the
run counted as rows streamed past), one scan of the run's own rows in the table (per-category
score histograms and dedup counts), and Ray Data's per-operator stats (wall time, throughput).
Histograms live in the manifest so that comparing a run with the previous one (drift) needs no
scan of old runs, whose rows later runs may have overwritten anyway.

The policy is stored whole (categories, prompts, thresholds) with its hash and path: the report
draws thresholds from it long after the YAML has been edited, or on a machine that cannot reach
the path the job used, and the hash says which rows it scored. Policies are a few KB.

Credentials never enter a manifest: storage settings hold none by design (see
`schemas.storage`), and every string is passed through `redact_uri` for `user:password@` URIs.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipline.operators.decode import redact_uri
from clipline.pipelines.summary import RunSummary
from clipline.schemas.config import JobConfig
from clipline.schemas.policy import Policy
from clipline.schemas.storage import StorageConfig
from clipline.table.maintain import listing_time
from clipline.table.store import Sidecars, sql_literal

MANIFEST_VERSION = 1
HISTOGRAM_BINS = 20
# Drift is flagged when a category's score distribution moves by more than this much score mass
# (Wasserstein-1 on the histograms): 0.05 = every row's score shifting by 0.05 on average, or 5 %
# of rows crossing the whole [0, 1] range. It is in score units, so it reads against thresholds,
# and unlike Jensen–Shannon it stays quiet on small runs where sparse bins are mostly noise.
DRIFT_THRESHOLD = 0.05
SCAN_COLUMNS = ["status", "error_code", "scores", "dup_of", "dup_cluster"]


def redacted(value: Any) -> Any:
    """`value` with `user:password@` removed from every string, at any depth."""
    if isinstance(value, str):
        return redact_uri(value)
    if isinstance(value, dict):
        return {key: redacted(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(item) for item in value]
    return value


def config_hash(config: JobConfig) -> str:
    """sha256 of the config without its run id: two runs of the same job share a hash."""
    return hashlib.sha256(config.model_dump_json(exclude={"run_id"}).encode()).hexdigest()


# --- one scan of the run's rows -------------------------------------------------------------------


class ScoreHistograms:
    """Per-category histograms of `scores` over [0, 1], accumulated batch by batch."""

    def __init__(self, bins: int = HISTOGRAM_BINS) -> None:
        self.edges = np.linspace(0.0, 1.0, bins + 1)
        self.counts: dict[str, np.ndarray] = {}
        self.sums: Counter = Counter()

    def add(self, scores: pa.ChunkedArray | pa.Array) -> None:
        flat = pc.list_flatten(scores)
        if len(flat) == 0:
            return
        categories = np.asarray(pc.struct_field(flat, "category").to_pylist(), dtype=object)
        values = pc.struct_field(flat, "score").to_numpy(zero_copy_only=False).astype(np.float64)
        for category in dict.fromkeys(categories.tolist()):
            chosen = np.clip(values[categories == category], 0.0, 1.0)
            counts, _ = np.histogram(chosen, bins=self.edges)
            self.counts[category] = self.counts.get(category, np.zeros(len(counts), np.int64)) + counts
            self.sums[category] += float(chosen.sum())

    def to_dict(self) -> dict:
        categories = {}
        for category, counts in self.counts.items():
            n = int(counts.sum())
            categories[category] = {
                "counts": counts.astype(int).tolist(),
                "n": n,
                "mean": round(self.sums[category] / n, 6) if n else None,
            }
        return {"edges": [round(edge, 6) for edge in self.edges.tolist()], "categories": categories}


def scan_run_rows(table: Any, run_id: str) -> dict:
    """Score histograms and dedup counts of the rows this run wrote (one filtered scan, no vectors)."""
    histograms = ScoreHistograms()
    dedup = Counter()
    clusters: set[str] = set()
    table.checkout_latest()
    query = table.search().where(f"run_id = {sql_literal(run_id)}").select(SCAN_COLUMNS).limit(None)
    for batch in query.to_batches():
        histograms.add(pc.filter(batch.column("scores"), pc.equal(batch.column("status"), "ok")))
        dedup["dup_of"] += len(batch) - batch.column("dup_of").null_count
        dedup["duplicate_id"] += pc.sum(pc.equal(batch.column("error_code"), "duplicate_id")).as_py() or 0
        clusters.update(value for value in batch.column("dup_cluster").to_pylist() if value)
    return {
        "scores": histograms.to_dict(),
        "dedup": {
            "rows_with_dup_of": dedup["dup_of"],
            "clusters": len(clusters),
            "duplicate_ids": dedup["duplicate_id"],
        },
    }


# --- drift ----------------------------------------------------------------------------------------


def wasserstein(p: np.ndarray, q: np.ndarray, edges: np.ndarray) -> float:
    """Earth mover's distance between two histograms on the same bins, in score units."""
    widths = np.diff(edges)
    return float(np.sum(np.abs(np.cumsum(p) - np.cumsum(q))[:-1] * widths[:-1]))


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen–Shannon distance (base 2, in [0, 1]): shown beside the flag metric, for shape changes."""
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log2(p / m), 0.0).sum()
        kl_q = np.where(q > 0, q * np.log2(q / m), 0.0).sum()
    return float(math.sqrt(max(0.0, (kl_p + kl_q) / 2)))


def score_drift(current: dict, previous: dict | None, threshold: float = DRIFT_THRESHOLD) -> dict:
    """Per-category distance between this run's and the previous run's score histograms.

    Both are manifests. Categories missing from either side, or with no scored rows, get no
    distance; a policy change is reported because it moves scores by itself.
    """
    if previous is None:
        return {"previous_run_id": None, "metric": "wasserstein", "threshold": threshold, "categories": {}}
    edges = np.asarray(current["scores"]["edges"])
    now, before = current["scores"]["categories"], previous.get("scores", {}).get("categories", {})
    same_bins = previous.get("scores", {}).get("edges") == current["scores"]["edges"]
    categories = {}
    for name in [c["name"] for c in current["policy"]["categories"]]:
        a, b = now.get(name), before.get(name)
        if not (same_bins and a and b and a["n"] and b["n"]):
            categories[name] = {"wasserstein": None, "js_distance": None, "drifted": False}
            continue
        p = np.asarray(a["counts"], float) / a["n"]
        q = np.asarray(b["counts"], float) / b["n"]
        distance = wasserstein(p, q, edges)
        categories[name] = {
            "wasserstein": round(distance, 4),
            "js_distance": round(js_distance(p, q), 4),
            "mean_before": b["mean"],
            "mean_now": a["mean"],
            "n_before": b["n"],
            "n_now": a["n"],
            "drifted": distance > threshold,
        }
    return {
        "previous_run_id": previous["run_id"],
        "metric": "wasserstein",
        "threshold": threshold,
        "policy_changed": previous.get("policy", {}).get("hash") != current["policy"]["hash"],
        "categories": categories,
    }


# --- build, store, find ---------------------------------------------------------------------------


def policy_record(policy: Policy | None, path: str | None) -> dict:
    """The policy as the report needs it; an embedding-only run (no policy) has no categories."""
    if policy is None:
        return {
            "name": None,
            "version": None,
            "hash": None,
            "path": None,
            "templates": [],
            "categories": [],
            "hash_lists": [],
        }
    return {
        "name": policy.name,
        "version": policy.version,
        "hash": policy.content_hash,
        "path": path,
        "templates": policy.templates,
        "categories": [category.model_dump(mode="json") for category in policy.categories],
        # which list contents the run matched against (sha256 of each file), for audits
        "hash_lists": [{**spec.canonical(), "uri": spec.uri, "entries": spec.entries} for spec in policy.hash_lists],
    }


def build_manifest(
    summary: RunSummary,
    config: JobConfig,
    policy: Policy | None,
    run_rows: dict,
    finished_at: datetime | None = None,
) -> dict:
    """The manifest as a dict; `run_rows` is `scan_run_rows(...)`."""
    finished = finished_at or datetime.now(UTC)
    started = finished - timedelta(seconds=summary.wall_s)
    model = config.model.model_dump(mode="json", exclude={"cache_dir"})
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "run_id": summary.run_id,
        "table": summary.table,
        "table_uri": summary.table_uri,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": finished.isoformat(timespec="seconds"),
        "config_hash": config_hash(config),
        "config": config.model_dump(mode="json"),
        "model": {**model, "weights": config.model.weights_label},
        "policy": policy_record(policy, config.policy),
        "input": {
            "files_total": summary.files_total,
            "processed": summary.files_processed,
            "skipped_already_committed": summary.files_skipped,
            "claimed_elsewhere": summary.files_claimed_elsewhere,
        },
        "rows": {
            "in": summary.rows_in,
            "written": summary.rows_written,
            "replaced": summary.rows_replaced,
            "ids_updated": summary.ids_updated,
            "ok": summary.ok,
            "failed": summary.failed,
            "table_rows": summary.table_rows,
        },
        "failed_by_code": dict(sorted(summary.failed_by_code.items())),
        "decisions": dict(sorted(summary.decisions.items())),
        "flagged": summary.flagged,
        "labels": dict(sorted(summary.labels.items())),
        "dedup": run_rows["dedup"],
        "dedup_tiers": summary.dedup,
        "table_version": {"before": summary.table_version_before, "after": summary.table_version_after},
        "timing": {
            "wall_s": round(summary.wall_s, 3),
            "rows_per_s": round(summary.rows_per_s, 2),
            "stages": summary.stages,
            "tail": summary.tail,
            "startup": summary.startup,
        },
        "scores": run_rows["scores"],
    }
    return redacted(manifest)


class ManifestStore:
    """Manifests and reports of one table's runs under `Sidecars.runs(table)`, via fsspec."""

    def __init__(self, db_uri: str, table: str, storage: StorageConfig | None = None) -> None:
        self.db_uri, self.table = db_uri.rstrip("/"), table
        storage = storage or StorageConfig()
        self.uri = Sidecars(self.db_uri).runs(table)
        self.fs, self.root = fsspec.core.url_to_fs(self.uri, **storage.fsspec_options(db_uri))

    def _path(self, run_id: str, suffix: str) -> str:
        if "/" in run_id or run_id.startswith("."):
            raise ValueError(f"run id {run_id!r} cannot name a file")
        return f"{self.root}/{run_id}.{suffix}"

    def write(self, run_id: str, suffix: str, data: bytes) -> str:
        """Write `{run_id}.{suffix}`; returns its URI as the user gave the database."""
        self.fs.makedirs(self.root, exist_ok=True)
        self.fs.pipe_file(self._path(run_id, suffix), data)
        return f"{self.uri}/{run_id}.{suffix}"

    def read(self, run_id: str) -> dict | None:
        try:
            return json.loads(self.fs.cat_file(self._path(run_id, "json")))
        except FileNotFoundError:
            return None

    def read_report(self, run_id: str) -> bytes | None:
        """The run's HTML report as it was written (the web app serves it)."""
        try:
            return self.fs.cat_file(self._path(run_id, "html"))
        except FileNotFoundError:
            return None

    def run_ids(self) -> list[str]:
        """Run ids with a manifest, oldest first (by when each manifest was written)."""
        self.fs.invalidate_cache(self.root)
        try:
            entries = self.fs.ls(self.root, detail=True)
        except FileNotFoundError:
            return []
        manifests = [entry for entry in entries if entry["name"].endswith(".json")]
        manifests.sort(key=lambda entry: (listing_time(entry), entry["name"]))
        return [entry["name"].rsplit("/", 1)[-1].removesuffix(".json") for entry in manifests]

    def previous(self, run_id: str) -> dict | None:
        """The latest other run that scored rows: what drift compares with.

        Runs that found no new input (a scheduled run with nothing to do) are passed over, so
        they do not break the chain of comparisons.
        """
        for other in reversed([other for other in self.run_ids() if other != run_id]):
            manifest = self.read(other)
            if manifest and manifest["rows"]["ok"]:
                return manifest
        return None


def manifest_json(manifest: dict) -> bytes:
    return json.dumps(manifest, indent=2, sort_keys=False).encode()
