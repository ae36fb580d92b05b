"""The search page's filters, turned into one LanceDB SQL prefilter.

People filter with controls (decision, labels, status, a category's score range, run id); the SQL
is written here, every value quoted by `sql_literal`, so a filter value can never change the
query's shape. A free `where` box is there for people who know the schema; it is combined with AND.

A category's score lives in the `scores` list (`{category, score}` per policy category, in the
policy's order). LanceDB's SQL indexes lists but has no lambdas, so "score of `star` >= 0.5"
is an OR over the positions a category can hold: any row, whatever policy version scored it,
matches at the position where its `star` is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clipline.schemas.table import Decision, Status
from clipline.table.store import sql_literal


@dataclass(frozen=True)
class ScoreRange:
    category: str
    low: float | None = None
    high: float | None = None


class FilterError(ValueError):
    """A filter value that cannot be used (an unknown decision, an inverted range)."""


@dataclass(frozen=True)
class SearchFilters:
    """What the search form and `GET /api/search` filter by; every part is optional."""

    decisions: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    status: str | None = None
    run_id: str | None = None
    reviewed: bool | None = None
    scores: tuple[ScoreRange, ...] = field(default_factory=tuple)
    where: str | None = None

    def sql(self, positions: int) -> str | None:
        """The prefilter, or None; `positions` is the longest `scores` list a row can have."""
        parts = [part for part in self._parts(positions) if part]
        return " AND ".join(f"({part})" for part in parts) if parts else None

    def _parts(self, positions: int) -> list[str | None]:
        unknown = sorted(set(self.decisions) - set(Decision))
        if unknown:
            raise FilterError(f"decision {unknown} is not one of {[*Decision]}")
        if self.status is not None and self.status not in set(Status):
            raise FilterError(f"status {self.status!r} is not one of {[*Status]}")
        return [
            f"decision IN ({', '.join(sql_literal(value) for value in self.decisions)})" if self.decisions else None,
            f"array_has_any(labels, [{', '.join(sql_literal(value) for value in self.labels)}])"
            if self.labels
            else None,
            f"status = {sql_literal(self.status)}" if self.status else None,
            f"run_id = {sql_literal(self.run_id)}" if self.run_id else None,
            None if self.reviewed is None else f"override_decision IS {'NOT ' if self.reviewed else ''}NULL",
            *(score_condition(score, positions) for score in self.scores),
            self.where.strip() if self.where and self.where.strip() else None,
        ]


def score_condition(score: ScoreRange, positions: int) -> str | None:
    """`category`'s score within [low, high], wherever the category sits in `scores`."""
    if score.low is None and score.high is None:
        return None
    if score.low is not None and score.high is not None and score.low > score.high:
        raise FilterError(f"score range of {score.category!r}: {score.low} is above {score.high}")
    bounds = []
    for index in range(1, positions + 1):
        item = f"scores[{index}]"
        terms = [f"{item}.category = {sql_literal(score.category)}"]
        if score.low is not None:
            terms.append(f"{item}.score >= {float(score.low)!r}")
        if score.high is not None:
            terms.append(f"{item}.score <= {float(score.high)!r}")
        bounds.append("(" + " AND ".join(terms) + ")")
    return " OR ".join(bounds) if bounds else "false"
