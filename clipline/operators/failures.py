"""A row's failure as an exception with its error code, and URI redaction for messages.

Every per-row step (reading an `image_uri`, decoding, checking the shape) raises `RowFailure`;
the decode operator turns it into the row's `failed` status, code and message, so one bad input
never takes its batch down.
"""

from __future__ import annotations

import re

from clipline.schemas.table import ErrorCode

_USERINFO = re.compile(r"//[^/@]+@")


class RowFailure(Exception):
    """A per-row failure with the error code that lands in the table."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def redact_uri(uri: str) -> str:
    """Drop `user:password@` from a URI before it reaches an error message or a log."""
    return _USERINFO.sub("//", uri)
