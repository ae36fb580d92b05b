"""The web review queue: its orders, and leases that keep two reviewers (or two servers) off the same rows."""

from __future__ import annotations

import shutil
import time

import pytest

from clipline.moderation.queue import Leases, QueueOrder, lease_page, queue_ids
from clipline.moderation.review import ReviewerDecision, record_decisions
from clipline.table.store import ClipTable
from tests.moderation.test_calibrate import labelled_rows
from tests.tables import ingest


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("queue")
    rows, _ = labelled_rows(90, seed=41, prefix="q")
    ingest(str(root / "db"), rows)
    return root / "db"


@pytest.fixture
def table(pristine, tmp_path) -> ClipTable:
    shutil.copytree(pristine, tmp_path / "db")
    return ClipTable.open(str(tmp_path / "db"), "media")


def stored(table: ClipTable) -> dict[str, dict]:
    return {row["id"]: row for row in table.lance.to_arrow().to_pylist()}


def test_the_queue_holds_undecided_flagged_rows_in_the_chosen_order(table):
    rows = stored(table)
    in_review = {row_id for row_id, row in rows.items() if row["decision"] == "review"}
    blocked = {row_id for row_id, row in rows.items() if row["decision"] == "block"}
    assert len(in_review) >= 10 and blocked

    by_score = queue_ids(table, QueueOrder.SCORE)
    assert set(by_score) == in_review
    top = [max(reason["score"] for reason in rows[row_id]["reasons"]) for row_id in by_score]
    assert top == sorted(top, reverse=True)
    by_margin = queue_ids(table, QueueOrder.MARGIN)
    nearest = [min(abs(reason["margin"]) for reason in rows[row_id]["reasons"]) for row_id in by_margin]
    assert nearest == sorted(nearest) and by_margin != by_score
    assert set(queue_ids(table, QueueOrder.SCORE, include_block=True)) == in_review | blocked

    record_decisions(table, [ReviewerDecision(by_score[0], "allow", "alice")], "web")
    assert by_score[0] not in queue_ids(table, QueueOrder.SCORE)


def test_two_reviewers_get_disjoint_pages_that_stay_put(table):
    leases = Leases(table)
    alice = lease_page(table, leases, "alice", 4)
    bob = lease_page(table, Leases(table), "bob", 4)
    assert len(alice) == len(bob) == 4 and not set(alice) & set(bob)
    assert lease_page(table, leases, "alice", 4) == alice  # reloading the page renews it, same rows
    assert queue_ids(table)[:4] == alice  # alice got the top of the queue, bob the next rows

    # alice decides two rows: they leave the queue, her page is refilled from free rows
    record_decisions(table, [ReviewerDecision(row_id, "block", "alice") for row_id in alice[:2]], "web")
    refilled = lease_page(table, leases, "alice", 4)
    assert alice[2:] == [row_id for row_id in refilled if row_id in alice] and not set(refilled) & set(bob)
    assert set(alice[:2]).isdisjoint(leases.current())  # decided rows hold no lease any more

    # skipped rows are set aside for the one who skipped them, and free for the others
    skipped = lease_page(table, leases, "alice", 4, skipped=[refilled[0]])
    assert refilled[0] not in skipped and refilled[0] in lease_page(table, Leases(table), "carol", 8)


def test_an_abandoned_page_is_free_again_when_its_leases_expire(table):
    short = Leases(table, ttl_s=0.5)
    alice = lease_page(table, short, "alice", 3)
    assert not set(alice) & set(lease_page(table, Leases(table), "bob", 3))
    time.sleep(0.6)
    assert set(alice) <= set(lease_page(table, Leases(table), "carol", 10))


def test_two_servers_that_saw_the_same_free_row_cannot_both_lease_it(table):
    """Both read the leases before either wrote one: the exclusive create lets exactly one win."""
    row_id = queue_ids(table)[0]
    first, second = Leases(table), Leases(table)
    seen_by_first, seen_by_second = first.current().get(row_id), second.current().get(row_id)
    assert seen_by_first is None and seen_by_second is None
    assert [first.take("alice", row_id, seen_by_first), second.take("bob", row_id, seen_by_second)] == [True, False]
    assert Leases(table).current()[row_id].reviewer == "alice"

    # the same race over an expired lease: the next generation is created exclusively too
    expired = Leases(table, ttl_s=-1)
    assert expired.take("carol", queue_ids(table)[1], None)
    stale = Leases(table).current()[queue_ids(table)[1]]
    assert [first.take("dan", stale.row_id, stale), second.take("erin", stale.row_id, stale)] == [True, False]
