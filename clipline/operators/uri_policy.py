"""Read an `image_uri` only when it lies under an allowed prefix, streamed with a hard byte cap.

An `image_uri` comes from whoever produced the input. Without a policy a worker reads anything it
can reach: /etc/passwd, /proc/self/environ (credentials), other tenants' images,
http://169.254.169.254/ (cloud metadata), /dev/zero (size 0, endless). The policy is an allowlist
(`source.allowed_uri_prefixes`, default: the directories of `source.paths`):

* The decision is made on the text of the URI first (`UriPolicy.target`), touching nothing: a URI
  outside every prefix, with `..` segments, with an unlisted scheme, relative, or malformed fails
  with `uri_not_allowed` and one fixed message, whether or not the target exists.
* Local paths inside an allowed directory: symlinks are resolved one hop at a time, each hop
  checked before anything past it is looked at; the file is then opened by walking from the
  allowed root with O_NOFOLLOW on every component (a symlink swapped in after the check fails
  the open instead of escaping) and O_NONBLOCK (a FIFO cannot hang the worker), and fstat must
  say regular file (no devices, FIFOs, sockets, directories). Only inside the allowed area may
  a missing file say `uri_not_found`.
* s3: one ranged GET for at most cap + 1 bytes; keys with `.`/`..` segments are refused.
* http(s): only under a listed prefix; the host is resolved once and a name resolving to a
  private, loopback or link-local address is refused (a listed IP literal is taken as meant);
  the connection goes to the checked address, redirects are not followed.

Every read stops at cap + 1 bytes, and one byte over the cap fails the row: sizes reported by
a filesystem or a server are never trusted.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import posixpath
import re
import socket
import ssl
import stat
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

import fsspec

from clipline.operators.failures import RowFailure, redact_uri
from clipline.schemas.storage import StorageConfig
from clipline.schemas.table import ErrorCode
from clipline.schemas.uri_prefixes import (
    HTTP_SCHEMES,
    S3_SCHEMES,
    HttpPrefix,
    LocalPrefix,
    S3Prefix,
    has_dot_segments,
    is_bucket_name,
    parse_prefix,
    split_scheme,
    under_forbidden_root,
)

NOT_ALLOWED = "not under source.allowed_uri_prefixes"
NOT_TRUSTED = "not a local file or s3:// object outside /proc, /sys, /dev and /run"
MAX_SYMLINK_HOPS = 40
MAX_URI_LENGTH = 4096
CHUNK = 1 << 20
HTTP_TIMEOUT_S = 20.0
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class NotAllowed(Exception):
    """The URI is outside every allowed location, or malformed: one outcome for all such cases."""


class _NotRegular(OSError):
    """The opened file is a device, FIFO, socket or directory."""


@dataclass(frozen=True)
class LocalTarget:
    root: str  # realpath of the allowed directory
    parts: tuple[str, ...]  # components below the root, no "." / ".." / ""


@dataclass(frozen=True)
class S3Target:
    bucket: str
    key: str


@dataclass(frozen=True)
class HttpTarget:
    scheme: str
    host: str
    port: int
    path_and_query: str
    host_is_ip: bool


@dataclass(frozen=True)
class UriPolicy:
    """The allowlist. Build it with `from_prefixes`; `target(uri)` decides without any I/O."""

    local_roots: tuple[tuple[str, str], ...] = ()  # (as configured, realpath)
    s3_prefixes: tuple[S3Prefix, ...] = ()
    http_prefixes: tuple[HttpPrefix, ...] = ()

    @classmethod
    def from_prefixes(cls, prefixes: list[str]) -> UriPolicy:
        """Parse the configured prefixes (ValueError if unsafe); local ones are realpath'd once, here."""
        local, s3, web = [], [], []
        for prefix in prefixes:
            parsed = parse_prefix(prefix)
            if isinstance(parsed, LocalPrefix):
                local.append((parsed.path, os.path.realpath(parsed.path)))
            elif isinstance(parsed, S3Prefix):
                s3.append(parsed)
            else:
                web.append(parsed)
        return cls(tuple(local), tuple(s3), tuple(web))

    def target(self, uri: str) -> LocalTarget | S3Target | HttpTarget:
        """Where `uri` points if it is inside an allowed location; NotAllowed otherwise. No I/O."""
        if not isinstance(uri, str) or not uri or len(uri) > MAX_URI_LENGTH or _CONTROL.search(uri):
            raise NotAllowed
        scheme, rest = split_scheme(uri)
        if scheme is None:
            return self._local(uri)
        if scheme == "file":
            return self._local(_file_url_path(uri))
        if scheme in S3_SCHEMES:
            return self._s3(rest)
        if scheme in HTTP_SCHEMES:
            return self._http(uri)
        raise NotAllowed  # ftp, gs, memory, data, fsspec chains ("simplecache::s3://..."), ...

    def _local(self, path: str) -> LocalTarget:
        if not posixpath.isabs(path) or has_dot_segments(path):
            raise NotAllowed  # relative paths mean different things on different workers
        path = "/" + posixpath.normpath(path).lstrip("/")
        for configured, real in sorted(self.local_roots, key=lambda pair: -len(pair[0])):
            for root in (configured, real):
                if path.startswith(root.rstrip("/") + "/"):
                    parts = tuple(part for part in path[len(root.rstrip("/")) + 1 :].split("/") if part)
                    if parts:
                        return LocalTarget(real, parts)
        raise NotAllowed

    def _s3(self, rest: str) -> S3Target:
        if not rest.startswith("//"):
            raise NotAllowed
        bucket, slash, key = rest[2:].partition("/")
        if not slash or not is_bucket_name(bucket) or not key or has_dot_segments(key) or "//" in key:
            raise NotAllowed  # also refuses userinfo ("user@bucket") and ports ("bucket:9000")
        for prefix in self.s3_prefixes:
            if bucket == prefix.bucket and key.startswith(prefix.key_prefix) and len(key) > len(prefix.key_prefix):
                return S3Target(bucket, key)
        raise NotAllowed

    def _http(self, uri: str) -> HttpTarget:
        try:
            parts = urllib.parse.urlsplit(uri)
            port = parts.port
        except ValueError as exc:
            raise NotAllowed from exc
        if "@" in parts.netloc or not parts.hostname or "\\" in uri or has_dot_segments(parts.path):
            raise NotAllowed
        scheme, host = parts.scheme.lower(), parts.hostname.lower()
        port = port or (443 if scheme == "https" else 80)
        decoded_path = urllib.parse.unquote(parts.path)
        for prefix in self.http_prefixes:
            if (prefix.scheme, prefix.host, prefix.port) != (scheme, host, port):
                continue
            if parts.path.startswith(prefix.path) and decoded_path.startswith(prefix.path):
                path_and_query = parts.path + (f"?{parts.query}" if parts.query else "")
                return HttpTarget(scheme, host, port, path_and_query, _is_ip(host))
        raise NotAllowed


def _file_url_path(uri: str) -> str:
    """The path of a `file://` URL on this machine (no host but localhost, no query)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.query or parts.fragment or parts.netloc not in ("", "localhost") or has_dot_segments(parts.path):
        raise NotAllowed
    path = urllib.parse.unquote(parts.path)
    if _CONTROL.search(path) or not path.startswith("/"):
        raise NotAllowed
    return path


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def resolve_local(target: LocalTarget, policy: UriPolicy) -> tuple[str, tuple[str, ...]]:
    """Follow symlinks one hop at a time, never looking at anything outside the allowed roots.

    Returns (root, components below it) of the real file. `..` from a symlink's target pops a
    directory already known to be real, so it means what the kernel would make of it; a hop that
    leaves every allowed root is refused before it is followed.
    """
    roots = [real for _, real in policy.local_roots]
    current, pending, hops = target.root, list(target.parts), 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            current = posixpath.dirname(current) or "/"
            continue
        candidate = posixpath.join(current, part)
        if candidate in roots or any(_inside(root, candidate) for root in roots):
            current = candidate  # a root or an ancestor of one: a real directory, not looked at
            continue
        if not any(_inside(candidate, root) for root in roots):
            raise NotAllowed
        if not stat.S_ISLNK(os.lstat(candidate).st_mode):
            current = candidate
            continue
        hops += 1
        link = os.readlink(candidate)
        if hops > MAX_SYMLINK_HOPS or _CONTROL.search(link):
            raise NotAllowed
        if link.startswith("/"):
            current = "/"
        pending = [piece for piece in link.split("/") if piece] + pending
    root = max((r for r in roots if _inside(current, r) and current != r), key=len, default=None)
    if root is None:
        raise NotAllowed
    return root, tuple(current[len(root.rstrip("/")) + 1 :].split("/"))


def open_local(root: str, parts: tuple[str, ...]) -> int:
    """Open root/parts... walking with O_NOFOLLOW on every component; fstat must say S_ISREG."""
    flags_dir = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_PATH", 0)
    flags_file = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    directory = os.open(root, flags_dir)
    try:
        for part in parts[:-1]:
            child = os.open(part, flags_dir, dir_fd=directory)
            os.close(directory)
            directory = child
        fd = os.open(parts[-1], flags_file, dir_fd=directory)
    finally:
        os.close(directory)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _NotRegular
    return fd


def read_capped_fd(fd: int, max_bytes: int) -> bytes:
    """Read at most max_bytes + 1 bytes, whatever fstat said: more than max_bytes fails the row."""
    chunks, total = [], 0
    while total <= max_bytes:
        try:
            chunk = os.read(fd, min(CHUNK, max_bytes + 1 - total))
        except BlockingIOError:  # O_NONBLOCK on something that is not a plain file after all
            raise _NotRegular from None
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def read_local_capped(root: str, parts: tuple[str, ...], max_bytes: int) -> bytes:
    fd = open_local(root, parts)
    try:
        return read_capped_fd(fd, max_bytes)
    finally:
        os.close(fd)


def read_s3(target: S3Target, max_bytes: int, storage: StorageConfig) -> bytes:
    """One ranged GET for bytes [0, max_bytes]: never HEAD-then-trust-the-size."""
    url = f"s3://{target.bucket}/{target.key}"
    fs, path = fsspec.core.url_to_fs(url, **storage.fsspec_options(url))
    return fs.cat_file(path, start=0, end=max_bytes + 1)


def _refused_address(address: str, target: HttpTarget) -> bool:
    ip = ipaddress.ip_address(address)
    return not target.host_is_ip and (not ip.is_global or ip.is_multicast)


def _connect(target: HttpTarget) -> socket.socket:
    """A connection to an address checked here, so DNS cannot change between check and fetch."""
    host = target.host.strip("[]")
    found = socket.getaddrinfo(host, target.port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(info[4][0] for info in found))
    if not addresses or any(_refused_address(address, target) for address in addresses):
        raise NotAllowed  # a listed name that resolves to loopback, private or link-local space
    error: OSError = OSError(f"no address for {host}")
    for address in addresses:
        try:
            sock = socket.create_connection((address, target.port), timeout=HTTP_TIMEOUT_S)
        except OSError as exc:
            error = exc
            continue
        if target.scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        return sock
    raise error


def read_http(target: HttpTarget, max_bytes: int) -> bytes:
    """GET with Range, no redirects, no proxies, stopped at cap + 1 bytes or the deadline."""
    deadline = time.monotonic() + HTTP_TIMEOUT_S
    sock = _connect(target)
    try:
        host = target.host.strip("[]")
        connection = http.client.HTTPConnection(host, target.port, timeout=HTTP_TIMEOUT_S)
        connection.sock = sock
        connection.putrequest("GET", target.path_and_query, skip_host=True, skip_accept_encoding=True)
        connection.putheader("Host", host if target.port in (80, 443) else f"{host}:{target.port}")
        connection.putheader("Range", f"bytes=0-{max_bytes}")
        connection.putheader("Accept-Encoding", "identity")
        connection.endheaders()
        response = connection.getresponse()
        if response.status == 404:
            raise FileNotFoundError
        if response.status not in (200, 206):
            raise OSError(f"HTTP {response.status}")  # redirects included: never followed
        chunks, total = [], 0
        while total <= max_bytes:
            if time.monotonic() > deadline:
                raise TimeoutError("read took too long")
            chunk = response.read(min(CHUNK, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)
    finally:
        sock.close()


def _shown(uri: object) -> str:
    return _CONTROL.sub("?", redact_uri(uri)) if isinstance(uri, str) else repr(uri)


def _checked_read(uri: str, max_bytes: int, read: Callable[[], bytes], not_allowed: str = NOT_ALLOWED) -> bytes:
    """Run `read()` and turn every way it can fail into the row's error code."""
    shown = _shown(uri)
    try:
        data = read()
    except NotAllowed:
        raise RowFailure(ErrorCode.URI_NOT_ALLOWED, f"{shown}: {not_allowed}") from None
    except _NotRegular:
        raise RowFailure(ErrorCode.URI_NOT_ALLOWED, f"{shown}: not a regular file") from None
    except FileNotFoundError:
        raise RowFailure(ErrorCode.URI_NOT_FOUND, f"{shown} does not exist") from None
    except Exception as exc:  # permissions, ELOOP from a swapped symlink, network, ...
        raise RowFailure(ErrorCode.URI_UNREADABLE, f"cannot read {shown}: {type(exc).__name__}") from None
    if len(data) > max_bytes:
        raise RowFailure(ErrorCode.IMAGE_TOO_LARGE, f"{shown} is over {max_bytes} bytes")
    return data


class UriReader:
    """`read(uri)` → bytes, or RowFailure: uri_not_allowed, uri_not_found, uri_unreadable, image_too_large."""

    def __init__(self, policy: UriPolicy, max_bytes: int, storage: StorageConfig | None = None) -> None:
        self.policy = policy
        self.max_bytes = max_bytes
        self.storage = storage or StorageConfig()

    def read(self, uri: str) -> bytes:
        return _checked_read(uri, self.max_bytes, lambda: self._read(self.policy.target(uri)))

    def _read(self, target: LocalTarget | S3Target | HttpTarget) -> bytes:
        if isinstance(target, LocalTarget):
            return read_local_capped(*resolve_local(target, self.policy), self.max_bytes)
        if isinstance(target, S3Target):
            return read_s3(target, self.max_bytes, self.storage)
        return read_http(target, self.max_bytes)


def read_trusted(uri: str, max_bytes: int, storage: StorageConfig | None = None) -> bytes:
    """A path or s3:// URI the operator typed (a search query image), not one from the data.

    No allowlist, but the same byte cap, no /proc, /sys, /dev or /run, regular files only, and
    only local paths, `file://` and `s3://`.
    """

    def read() -> bytes:
        scheme, rest = split_scheme(uri)
        if scheme in S3_SCHEMES:
            bucket, _, key = rest[2:].partition("/") if rest.startswith("//") else ("", "", "")
            if not is_bucket_name(bucket) or not key:
                raise NotAllowed
            return read_s3(S3Target(bucket, key), max_bytes, storage or StorageConfig())
        if scheme not in (None, "file"):
            raise NotAllowed
        real = os.path.realpath(_file_url_path(uri) if scheme == "file" else uri)
        if under_forbidden_root(real):
            raise NotAllowed
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise _NotRegular
            return read_capped_fd(fd, max_bytes)
        finally:
            os.close(fd)

    return _checked_read(uri, max_bytes, read, NOT_TRUSTED)
