"""Known-bad PDQ hash lists named by a policy: the list file format, its checks, its content hash.

A policy's `hash_lists` entry names a list file, local or on S3. The file is read and checked
when the policy is loaded (on the driver, before any cluster work), so a malformed list fails the
config check with its file and line; its sha256 becomes part of the policy's content hash, so
`policy_hash` on a row says which list contents it was matched against. The encoder actors read
the file again when they start (`operators/hash_lists.py`) and refuse it if its sha256 changed.

List file format (UTF-8, an optional BOM):

    # comments and blank lines are ignored
    hash,label                      <- an optional header row, only as the first data line
    f8f8f0cce0f4e84d0e370a22028f67f0b36e2ed596623e1d33e6339c4e9c9b22
    0dad2599b1a1bd1853625f6553da32a1e63b7280c2374b4866b366c91bc9ce77,csam-db-v3
    "a5f4a457a48995e8c9065c275aaa5498b61ba4bdf8fcf80387c32f8b0bfc4f05","label, with comma"

A hash is 64 hex digits, either case: the canonical PDQ hex that Meta's references, ThreatExchange
and `pdq_hash` print. An entry without a label has the label "". Every malformed line is reported
with its number (the first MAX_REPORTED_ERRORS of them); nothing is skipped silently.
"""

from __future__ import annotations

import csv
import hashlib
import re
import string
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from clipline.schemas.base import ConfigError, StrictModel
from clipline.schemas.storage import StorageConfig, is_s3

HASH_LIST_NAME_PATTERN = r"^[a-z][a-z0-9_-]*$"
DEFAULT_MAX_DISTANCE = 31  # PDQ's usual match threshold: 0 false matches in 499,500 unrelated pairs
MAX_LABEL_CHARS = 256  # a label lands on every matching row
MAX_REPORTED_ERRORS = 20
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


class HashListError(ConfigError):
    """A malformed list: `errors` holds every (line number, message); the text names file and lines."""

    def __init__(self, source: str, errors: list[tuple[int, str]]) -> None:
        self.source = source
        self.errors = errors
        shown = "\n".join(f"    {source}:{line}: {message}" for line, message in errors[:MAX_REPORTED_ERRORS])
        more = len(errors) - MAX_REPORTED_ERRORS
        tail = f"\n    ... and {more} more" if more > 0 else ""
        super().__init__(f"{len(errors)} malformed line(s) in hash list {source}:\n{shown}{tail}")


@dataclass(frozen=True)
class HashListEntries:
    """A parsed list in file order: lower-case hex hashes and their labels."""

    hashes: list[str]
    labels: list[str]


def _fields(text: str) -> list[str]:
    if '"' not in text:  # the common case; quoted labels (with commas) go through the csv module
        return [field.strip() for field in text.split(",")]
    return [field.strip() for field in next(csv.reader([text], skipinitialspace=True))]


def _entry(text: str) -> tuple[str, str]:
    """(hash, label) of one stripped data line; raises ValueError saying what is wrong. The hex
    digits themselves are checked for the whole list at once (`_non_hex`)."""
    fields = _fields(text)
    if len(fields) > 2:
        raise ValueError(f"expected 'hash' or 'hash,label', got {len(fields)} fields")
    digest, label = fields[0], (fields[1] if len(fields) == 2 else "")
    if len(digest) != 64:
        raise ValueError(f"a hash is 64 hex digits, got {len(digest)} characters: {digest[:80]!r}")
    if len(label) > MAX_LABEL_CHARS:
        raise ValueError(f"the label is {len(label)} characters, over {MAX_LABEL_CHARS}")
    return digest, label


def _non_hex(hashes: list[str], numbers: list[int]) -> list[tuple[int, str]]:
    """(line, message) for every hash with a non-hex character. One C call checks them all (and the
    byte count shows that no whitespace was skipped); only a failure looks at hashes one by one."""
    try:
        if len(bytes.fromhex("".join(hashes))) == 32 * len(hashes):
            return []
    except ValueError:
        pass
    return [
        (number, f"the hash has a non-hex character {next(c for c in digest if c not in string.hexdigits)!r}")
        for digest, number in zip(hashes, numbers, strict=True)
        if not _HEX64.fullmatch(digest)
    ]


def _is_skipped(text: str) -> bool:
    return not text or text.startswith("#")


def _header_index(lines: list[str]) -> int | None:
    """The index of the optional `hash[,label]` header: it may only be the first data line."""
    for index, line in enumerate(lines):
        text = line.strip()
        if not _is_skipped(text):
            return index if _fields(text)[0].lower() == "hash" else None
    return None


def parse_hash_list(text: str, source: str) -> HashListEntries:
    """Parse and check a list's text (lines end with "\\n"); raises HashListError naming every bad line."""
    lines = text.removeprefix("\ufeff").split("\n")
    header = _header_index(lines)
    hashes, labels, numbers, errors = [], [], [], []
    for index, line in enumerate(lines):
        text = line.strip()
        if index == header or _is_skipped(text):
            continue
        try:
            digest, label = _entry(text)
        except (ValueError, csv.Error) as exc:
            errors.append((index + 1, str(exc)))
            continue
        hashes.append(digest)
        labels.append(label)
        numbers.append(index + 1)
    errors = sorted(errors + _non_hex(hashes, numbers))
    if errors:
        raise HashListError(source, errors)
    return HashListEntries([digest.lower() for digest in hashes], labels)


def decode_text(data: bytes, source: str) -> str:
    """UTF-8 text of a list file; bytes that are not UTF-8 fail naming the line they are on."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise HashListError(source, [(line, f"not UTF-8 text (byte {data[exc.start]:#04x})")]) from exc


def read_list_bytes(uri: str, storage: StorageConfig) -> bytes:
    """A list file's bytes, from a local path or s3:// with the job's storage settings."""
    import fsspec  # here, not at the top: loading a policy without lists needs no filesystem layer

    try:
        with fsspec.open(uri, "rb", **storage.fsspec_options(uri)) as handle:
            return handle.read()
    except FileNotFoundError as exc:
        raise ConfigError(f"hash list {uri} does not exist") from exc
    except Exception as exc:  # permissions, network, a bucket that is not there
        raise ConfigError(f"cannot read hash list {uri}: {type(exc).__name__}: {exc}") from exc


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class HashListSpec(StrictModel):
    """One list in a policy: rows whose PDQ hash is within `max_distance` bits of an entry get `action`.

    Rows whose `pdq_quality` is under `min_quality` are not matched (featureless images hash
    alike). `dihedral` also matches the 8 rotations and mirrors of each row's hash, derived from
    its bits (see `operators/hamming.py`): a mirrored copy then matches, at 8x the matching cost.
    Validating a spec reads the list (storage settings come from the validation context).
    """

    name: str = Field(pattern=HASH_LIST_NAME_PATTERN)
    uri: str = Field(min_length=1, description="local path (relative to the policy YAML) or s3:// URI")
    action: Literal["block", "review"]
    max_distance: int = Field(default=DEFAULT_MAX_DISTANCE, ge=0, le=128)
    min_quality: int = Field(default=50, ge=0, le=100)
    dihedral: bool = False
    _sha256: str = PrivateAttr(default="")
    _entries: int = PrivateAttr(default=0)

    @field_validator("uri")
    @classmethod
    def _local_or_s3(cls, value: str) -> str:
        if "://" in value and not is_s3(value):
            raise ValueError(f"{value!r}: a hash list is a local path or an s3:// URI")
        return value

    @model_validator(mode="after")
    def _read_and_check(self, info: ValidationInfo) -> HashListSpec:
        storage = (info.context or {}).get("storage") or StorageConfig()
        data = read_list_bytes(self.uri, storage)
        self._entries = len(parse_hash_list(decode_text(data, self.uri), self.uri).hashes)
        self._sha256 = sha256_hex(data)
        return self

    @property
    def sha256(self) -> str:
        """sha256 of the list file's bytes when the policy was loaded."""
        return self._sha256

    @property
    def entries(self) -> int:
        return self._entries

    @property
    def category(self) -> str:
        """The `category` of the reasons this list gives."""
        return f"hash:{self.name}"

    def canonical(self) -> dict:
        """What decides matches: the settings and the list's content, not where the file lives."""
        data = self.model_dump(mode="json", exclude={"uri"})
        return {**data, "sha256": self.sha256}

    def read(self, storage: StorageConfig) -> HashListEntries:
        """The entries, read again (in a worker); refused if the file changed since the policy was loaded,
        since rows would then carry a policy hash that does not describe the list they were matched with."""
        data = read_list_bytes(self.uri, storage)
        if sha256_hex(data) != self.sha256:
            raise ConfigError(
                f"hash list {self.name!r} ({self.uri}) changed after the policy was checked "
                f"(sha256 {self.sha256[:12]} then, {sha256_hex(data)[:12]} now); run again to use the new list"
            )
        return parse_hash_list(decode_text(data, self.uri), self.uri)
