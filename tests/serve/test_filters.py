"""The search filters' SQL: values quoted, a category found at whatever position it holds in `scores`."""

from __future__ import annotations

import pytest

from clipline.serve.filters import FilterError, ScoreRange, SearchFilters


def test_no_filter_is_no_where():
    assert SearchFilters().sql(4) is None


def test_every_value_is_quoted_and_parts_are_anded():
    sql = SearchFilters(
        decisions=("block", "review"),
        labels=("it's",),
        status="ok",
        run_id="r'1",
        reviewed=False,
        where="clip_score > 0.3",
    ).sql(4)
    assert sql == (
        "(decision IN ('block', 'review')) AND (array_has_any(labels, ['it''s'])) AND (status = 'ok') "
        "AND (run_id = 'r''1') AND (override_decision IS NULL) AND (clip_score > 0.3)"
    )


def test_a_score_range_matches_the_category_at_any_position():
    sql = SearchFilters(scores=(ScoreRange("star", 0.5, None),)).sql(2)
    assert sql == (
        "((scores[1].category = 'star' AND scores[1].score >= 0.5) OR "
        "(scores[2].category = 'star' AND scores[2].score >= 0.5))"
    )
    assert SearchFilters(scores=(ScoreRange("star"),)).sql(2) is None  # no bound: no filter


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        (SearchFilters(decisions=("maybe",)), "is not one of"),
        (SearchFilters(status="lost"), "is not one of"),
        (SearchFilters(scores=(ScoreRange("star", 0.9, 0.1),)), "is above"),
    ],
)
def test_unusable_filters_are_refused_by_name(filters, message):
    with pytest.raises(FilterError, match=message):
        filters.sql(3)
