"""The syntax of `source.allowed_uri_prefixes`: where an `image_uri` may point, parsed without I/O.

An `image_uri` is written by whoever produced the input, so a worker reads one only when it lies
under a prefix the job's author allowed. Parsing lives here, with the config, so a bad prefix is a
config error naming the field before any cluster work; `operators/uri_policy.py` matches URIs
against the parsed prefixes and does the reading.

Accepted prefixes: an absolute local directory (or `file://` URL of one), `s3://bucket/` or
`s3://bucket/prefix/`, and `http(s)://host[:port]/path/`. Never a root that exposes the machine
itself (`/`, /proc, /sys, /dev, /run, or a symlink into them: the one look at the filesystem here),
never one with `.`/`..` segments or credentials in it.
"""

from __future__ import annotations

import os
import posixpath
import re
import urllib.parse
from dataclasses import dataclass

FORBIDDEN_ROOTS = ("/proc", "/sys", "/dev", "/run")
S3_SCHEMES = ("s3", "s3a")
HTTP_SCHEMES = ("http", "https")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class LocalPrefix:
    """An absolute local directory, normalised (no trailing slash)."""

    path: str


@dataclass(frozen=True)
class S3Prefix:
    """A bucket and a key prefix that is empty or ends in `/`."""

    bucket: str
    key_prefix: str


@dataclass(frozen=True)
class HttpPrefix:
    """Scheme, host, port and a path ending in `/`: only URLs under it are fetched."""

    scheme: str
    host: str
    port: int
    path: str


UriPrefix = LocalPrefix | S3Prefix | HttpPrefix


def split_scheme(uri: str) -> tuple[str | None, str]:
    """(lower-case scheme, rest); None for a plain path (a one-letter "scheme" is a drive letter)."""
    match = _SCHEME.match(uri)
    if not match or len(match.group(1)) == 1:
        return None, uri
    return match.group(1).lower(), uri[match.end() :]


def has_dot_segments(path: str) -> bool:
    """`.`/`..` segments in the text, also percent-encoded (once or twice) or separated by `\\`."""
    once = urllib.parse.unquote(path)
    for candidate in {path, once, urllib.parse.unquote(once)}:
        if any(segment in (".", "..") for segment in re.split(r"[/\\]", candidate)):
            return True
    return False


def is_bucket_name(name: str) -> bool:
    return bool(_BUCKET.match(name))


def under_forbidden_root(path: str) -> bool:
    return path == "/" or any(path == root or path.startswith(root + "/") for root in FORBIDDEN_ROOTS)


def parse_prefix(prefix: str) -> UriPrefix:
    """One allowed prefix, checked; raises ValueError saying what is wrong with it."""
    scheme, rest = split_scheme(prefix)
    if scheme is None or scheme == "file":
        return _local_prefix(prefix, scheme)
    if scheme in S3_SCHEMES:
        bucket, _, key_prefix = rest[2:].partition("/") if rest.startswith("//") else ("", "", "")
        if not is_bucket_name(bucket) or has_dot_segments(key_prefix) or (key_prefix and not key_prefix.endswith("/")):
            raise ValueError(f"{prefix!r}: an s3 prefix looks like s3://bucket/ or s3://bucket/prefix/")
        return S3Prefix(bucket, key_prefix)
    if scheme in HTTP_SCHEMES:
        parts = urllib.parse.urlsplit(prefix)
        if parts.username or parts.password or not parts.hostname or not parts.path.endswith("/"):
            raise ValueError(f"{prefix!r}: an http prefix looks like https://host/path/ (no credentials)")
        if has_dot_segments(parts.path):
            raise ValueError(f"{prefix!r}: no '.' or '..' segments")
        return HttpPrefix(scheme, parts.hostname.lower(), parts.port or (443 if scheme == "https" else 80), parts.path)
    raise ValueError(f"{prefix!r}: scheme {scheme!r} is not supported (local directories, s3://, http(s)://)")


def _local_prefix(prefix: str, scheme: str | None) -> LocalPrefix:
    path = urllib.parse.unquote(urllib.parse.urlsplit(prefix).path) if scheme else prefix
    if not posixpath.isabs(path) or has_dot_segments(path):
        raise ValueError(f"{prefix!r}: a local prefix must be an absolute directory without '..'")
    normal = "/" + posixpath.normpath(path).lstrip("/")
    for where in dict.fromkeys((normal, os.path.realpath(normal))):  # also through a symlink
        if under_forbidden_root(where):
            raise ValueError(f"{prefix!r}: {where} exposes the machine itself and cannot hold images")
    return LocalPrefix(normal)


def directory_of_source(path: str) -> str:
    """The prefix a `source.paths` entry allows by default: itself if a directory, else its parent.

    No I/O: a path whose last segment ends in `.parquet` is a file, anything else a directory;
    a relative local path is taken from the current directory, as the run reads it.
    """
    is_file = path.rstrip("/").rsplit("/", 1)[-1].endswith(".parquet")
    if split_scheme(path)[0] is None:
        absolute = posixpath.abspath(path)
        return posixpath.dirname(absolute) if is_file else absolute
    trimmed = path.rstrip("/")
    return (trimmed.rsplit("/", 1)[0] if is_file else trimmed) + "/"
