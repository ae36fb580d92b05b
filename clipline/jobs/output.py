"""How every verb prints its result: a text table for people, or JSON for scripts (`--json`).

A verb's work returns a result object with `to_dict()` and `format()`; `emit` prints it one way
or the other, so no verb carries its own printing code.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


class Result(Protocol):
    def to_dict(self) -> dict: ...

    def format(self) -> str: ...


@dataclass(frozen=True)
class Report:
    """A result that is plain JSON data (a report also written to disk, a list of search hits),
    with the function that formats it for people. `--json` prints the data exactly as it is."""

    data: Any
    formatter: Callable[[Any], str]

    def to_dict(self) -> Any:
        return self.data

    def format(self) -> str:
        return self.formatter(self.data)


def emit(result: Result, as_json: bool) -> int:
    """Print the result and return the verb's exit code (0: success)."""
    print(json.dumps(result.to_dict(), indent=2, default=str) if as_json else result.format())
    return 0
