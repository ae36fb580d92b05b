"""Ledger and claims on a real LanceDB and real storage: local disk and moto's S3 server."""

from __future__ import annotations

import multiprocessing
import time
import traceback

import pytest

from clipline.operators.read import InputFile
from clipline.pipelines.ledger import ClaimLost, InputChanged, Ledger
from clipline.schemas.storage import StorageConfig

FILES = [InputFile(path=f"s3://in/f{i}.parquet", size=10, version=f"v{i}", row_groups=(5,)) for i in range(24)]


def ledger(db_uri: str, run_id: str, storage: StorageConfig | None = None, ttl: float = 3600) -> Ledger:
    instance = Ledger(db_uri, "media", run_id, storage or StorageConfig(), claim_ttl_s=ttl)
    instance.setup()
    return instance


def test_committed_files_are_skipped_and_changed_files_are_new_work(tmp_path):
    first = ledger(str(tmp_path), "run-1")
    selection = first.select(FILES[:3], full=False)
    assert selection.todo == FILES[:3]
    first.record(selection.todo, {FILES[0].path: 5})
    changed = InputFile(path=FILES[1].path, size=11, version="v1-changed", row_groups=(6,))
    second = ledger(str(tmp_path), "run-2").select([*FILES[:3], changed, FILES[3]], full=False)
    assert second.todo == [changed, FILES[3]]
    assert second.already_committed == FILES[:3]
    full = ledger(str(tmp_path), "run-3").select(FILES[:3], full=True)
    assert full.todo == FILES[:3]


def test_a_live_claim_keeps_other_runs_off_and_a_stale_one_is_taken_over(tmp_path):
    holder = ledger(str(tmp_path), "holder")
    assert holder.select(FILES[:2], full=False).todo == FILES[:2]
    blocked = ledger(str(tmp_path), "other").select(FILES[:2], full=False)
    assert blocked.todo == [] and blocked.claimed_elsewhere == FILES[:2]
    time.sleep(0.2)
    takeover = ledger(str(tmp_path), "late", ttl=0.1).select(FILES[:2], full=False)
    assert takeover.todo == FILES[:2]
    holder.release(FILES[:2])  # the crashed holder's stale claims are not the newest; nothing breaks


def test_a_live_runs_claims_are_renewed_and_only_a_dead_runs_are_taken_over(tmp_path):
    ttl = 1.2
    holder = ledger(str(tmp_path), "holder", ttl=ttl)
    assert holder.select(FILES[:2], full=False).todo == FILES[:2]
    other = ledger(str(tmp_path), "other", ttl=ttl)
    with holder.heartbeat() as beat:
        deadline = time.monotonic() + 3 * ttl  # three TTLs: every claim would have expired unrenewed
        while time.monotonic() < deadline:
            assert other.select(FILES[:2], full=False).claimed_elsewhere == FILES[:2]
            time.sleep(ttl / 4)
        beat.check()
        assert beat.error is None
    # the holder dies: no more renewals, no release; after one TTL its claims are taken over
    time.sleep(ttl * 1.2)
    assert other.select(FILES[:2], full=False).todo == FILES[:2]
    assert holder.renew() == FILES[:2]  # the holder, were it still alive, learns it lost them
    with holder.heartbeat(interval_s=0.05) as beat:
        holder.held.update({"x": FILES[3]})  # a claim that is not there any more
        time.sleep(0.3)
    with pytest.raises(ClaimLost, match=FILES[3].path):
        beat.check()


def test_heartbeat_stops_cleanly_and_release_is_final(tmp_path):
    holder = ledger(str(tmp_path), "holder", ttl=0.3)
    assert holder.select(FILES[:1], full=False).todo == FILES[:1]
    with holder.heartbeat(interval_s=0.01) as beat:
        time.sleep(0.05)
        holder.release(FILES[:1])  # released mid-heartbeat: never written back by a late renewal
        time.sleep(0.05)
    assert not beat._thread.is_alive()
    assert holder.fs.glob(f"{holder.claims_root}/*.json") == []


def test_retry_checks_recorded_versions_and_claims_like_any_run(tmp_path):
    first = ledger(str(tmp_path), "run-1")
    first.record(first.select(FILES[:3], full=False).todo, {})
    changed = InputFile(path=FILES[1].path, size=11, version="v1-rewritten", row_groups=(6,))
    with pytest.raises(InputChanged) as caught:
        ledger(str(tmp_path), "retry-1").claim_for_retry([FILES[0], changed, FILES[7]])
    message = str(caught.value)
    assert FILES[1].path in message and "v1-rewritten" in message and FILES[7].path in message
    assert FILES[0].path not in message
    retry = ledger(str(tmp_path), "retry-2")
    assert retry.claim_for_retry(FILES[:2]).todo == FILES[:2]  # committed files, claimed for the retry
    assert ledger(str(tmp_path), "retry-3").claim_for_retry(FILES[:2]).claimed_elsewhere == FILES[:2]
    assert ledger(str(tmp_path), "run-2").select(FILES[:3], full=True).todo == [FILES[2]]
    retry.release(FILES[:2])
    assert ledger(str(tmp_path), "retry-4").claim_for_retry(FILES[:2]).todo == FILES[:2]


def _select_in_process(db_uri: str, run_id: str, storage: dict, barrier, results) -> None:
    try:
        instance = ledger(db_uri, run_id, StorageConfig(**storage))
        barrier.wait()
        selection = instance.select(FILES, full=False)
        instance.record(selection.todo, {})
        results[run_id] = [file.path for file in selection.todo]
    except Exception:
        results[run_id] = traceback.format_exc()
        raise


def race(db_uri: str, storage: dict, runs: int = 4) -> dict[str, list[str]]:
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(runs), context.Manager().dict()
    processes = [
        context.Process(target=_select_in_process, args=(db_uri, f"run-{i}", storage, barrier, results))
        for i in range(runs)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=240)
    outcome = dict(results)
    assert all(process.exitcode == 0 for process in processes), outcome
    return outcome


def assert_each_file_once(results: dict[str, list[str]]) -> None:
    claimed = [path for paths in results.values() for path in paths]
    assert sorted(claimed) == sorted(file.path for file in FILES)


@pytest.mark.slow
def test_concurrent_runs_never_take_the_same_file_locally(tmp_path):
    results = race(str(tmp_path), {})
    assert_each_file_once(results)
    assert ledger(str(tmp_path), "check").table.count_rows() == len(FILES)


@pytest.mark.slow
def test_concurrent_runs_never_take_the_same_file_on_s3(s3_endpoint, s3_bucket):
    storage = {"endpoint_url": s3_endpoint, "region": "us-east-1"}
    results = race(f"s3://{s3_bucket}/db", storage)
    assert_each_file_once(results)
