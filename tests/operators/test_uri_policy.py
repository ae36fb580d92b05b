"""image_uri policy: only allowed locations are read, refusals leak nothing, reads are capped.

Every attack below targets a canary file outside the allowed directory whose content is random
per run; the canary's bytes and hash must never come back, in data or in an error message.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import socket
import time
from typing import ClassVar

import pytest

from clipline.operators import uri_policy as up
from clipline.operators.failures import RowFailure
from clipline.operators.uri_policy import NotAllowed, UriPolicy, UriReader
from clipline.schemas.storage import StorageConfig
from tests.loopback import serving

CAP = 4096


@pytest.fixture
def tree(tmp_path):
    """allowed/ (with good files and every kind of trap) next to outside/ (with the canary)."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "sub").mkdir(parents=True)
    outside.mkdir()
    canary = os.urandom(64)
    (outside / "canary.jpg").write_bytes(canary)
    (allowed / "good.jpg").write_bytes(b"GOOD" * 10)
    (allowed / "sub" / "nested.jpg").write_bytes(b"NESTED")
    (allowed / "has space %2e.jpg").write_bytes(b"ODD")
    (allowed / "exact.jpg").write_bytes(b"x" * CAP)
    (allowed / "over.jpg").write_bytes(b"x" * (CAP + 1))
    with open(allowed / "sparse.jpg", "wb") as handle:  # 10 GB reported, nothing on disk
        handle.truncate(10 * 1024**3)
    os.symlink(outside / "canary.jpg", allowed / "abs_out.jpg")
    os.symlink("../outside/canary.jpg", allowed / "rel_out.jpg")
    os.symlink("sub/../../outside/canary.jpg", allowed / "dotdot_out.jpg")
    os.symlink(str(outside), allowed / "outside_dir")
    os.symlink("good.jpg", allowed / "rel_in.jpg")
    os.symlink("../good.jpg", allowed / "sub" / "up_in.jpg")
    os.symlink(str(allowed / "sub"), allowed / "abs_in_dir")
    os.symlink("/dev/zero", allowed / "zero.jpg")
    os.symlink("/proc/self/environ", allowed / "environ.jpg")
    os.symlink("loop_b", allowed / "loop_a")
    os.symlink("loop_a", allowed / "loop_b")
    os.symlink("nowhere.jpg", allowed / "dangling.jpg")
    os.mkfifo(allowed / "fifo.jpg")
    policy = UriPolicy.from_prefixes([str(allowed)])
    return {
        "allowed": allowed,
        "outside": outside,
        "canary": canary,
        "policy": policy,
        "reader": UriReader(policy, CAP),
    }


def attacks(tree) -> list[str]:
    allowed, outside = str(tree["allowed"]), str(tree["outside"])
    rel = os.path.relpath(outside, os.getcwd())
    return [
        f"{outside}/canary.jpg",
        f"{allowed}/../outside/canary.jpg",
        f"{allowed}/sub/../../outside/canary.jpg",
        f"{allowed}//..//outside/canary.jpg",
        f"{allowed}/./../outside/canary.jpg",
        f"file://{outside}/canary.jpg",
        f"FILE://{outside}/canary.jpg",
        f"file://localhost{outside}/canary.jpg",
        f"file:{outside}/canary.jpg",
        f"file://{allowed}/%2e%2e/outside/canary.jpg",
        f"file://{allowed}/%2E%2E/outside/canary.jpg",
        f"file://{allowed}/%252e%252e/outside/canary.jpg",
        f"file://{allowed}/..%2foutside/canary.jpg",
        f"file://{allowed}/sub%2f..%2f..%2foutside/canary.jpg",
        f"file://user:pw@localhost{outside}/canary.jpg",
        f"file://otherhost{allowed}/good.jpg",
        f"{allowed}/abs_out.jpg",
        f"{allowed}/rel_out.jpg",
        f"{allowed}/dotdot_out.jpg",
        f"{allowed}/outside_dir/canary.jpg",
        f"{allowed}/zero.jpg",
        f"{allowed}/environ.jpg",
        f"{rel}/canary.jpg",
        "canary.jpg",
        "~/canary.jpg",
        "/etc/passwd",
        "file:///etc/hostname",
        "/proc/self/environ",
        "/proc/self/cwd/canary.jpg",
        "/dev/zero",
        "/dev/stdin",
        f"{allowed}/good.jpg\x00/../../outside/canary.jpg",
        f"simplecache::file://{outside}/canary.jpg",
        f"zip://canary.jpg::file://{outside}/x.zip",
        f"memory://{outside}/canary.jpg",
        "http://127.0.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "s3://bucket/key.jpg",
        "",
    ]


def test_attacks_are_refused_and_the_canary_never_leaks(tree):
    digest = hashlib.sha256(tree["canary"]).hexdigest()
    for uri in attacks(tree):
        with pytest.raises(RowFailure) as caught:
            data = tree["reader"].read(uri)
            assert hashlib.sha256(data).hexdigest() != digest, uri
        failure = caught.value
        assert failure.code.value == "uri_not_allowed", (uri, failure.code, failure.message)
        assert digest not in failure.message and tree["canary"].hex() not in failure.message


@pytest.mark.parametrize(
    "name",
    ["abs_out.jpg", "rel_out.jpg", "dotdot_out.jpg", "outside_dir/canary.jpg", "zero.jpg", "environ.jpg"],
)
def test_symlinks_out_of_the_allowed_dir_are_not_allowed(tree, name):
    with pytest.raises(RowFailure) as caught:
        tree["reader"].read(f"{tree['allowed']}/{name}")
    assert caught.value.code.value == "uri_not_allowed"


def test_refusal_is_identical_whether_or_not_the_target_exists(tree):
    outside = str(tree["outside"])
    messages = set()
    for uri in [f"{outside}/canary.jpg", f"{outside}/no-such-file.jpg", "/etc/passwd", "/etc/no-such-file"]:
        with pytest.raises(RowFailure) as caught:
            tree["reader"].read(uri)
        assert caught.value.code.value == "uri_not_allowed"
        messages.add(caught.value.message.replace(uri, "<uri>"))
    assert len(messages) == 1


def test_nothing_outside_the_allowed_area_is_touched(tree, monkeypatch):
    """Record every path the reader stats, reads links of or opens; none may be outside."""
    inside = (str(tree["allowed"]), os.path.realpath(tree["allowed"]))
    touched = []
    for name in ("lstat", "stat", "readlink", "open", "listdir", "scandir"):
        original = getattr(os, name)

        def spy(path, *args, _original=original, _name=name, **kwargs):
            if isinstance(path, (str, bytes, os.PathLike)) and kwargs.get("dir_fd") is None:
                touched.append((_name, os.fsdecode(path)))
            return _original(path, *args, **kwargs)

        monkeypatch.setattr(up.os, name, spy)
    for uri in attacks(tree):
        with contextlib.suppress(RowFailure):
            tree["reader"].read(uri)
    outside = [(name, path) for name, path in touched if not os.path.normpath(path).startswith(inside)]
    assert not outside, outside


def test_target_decision_does_no_io(tree, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("I/O during the decision")

    for name in ("lstat", "stat", "readlink", "open", "listdir"):
        monkeypatch.setattr(up.os, name, boom)
    for uri in attacks(tree):
        with contextlib.suppress(NotAllowed):
            tree["policy"].target(uri)


def test_allowed_reads(tree):
    allowed, reader = tree["allowed"], tree["reader"]
    assert reader.read(f"{allowed}/good.jpg") == b"GOOD" * 10
    assert reader.read(f"file://{allowed}/good.jpg") == b"GOOD" * 10
    assert reader.read(f"File://localhost{allowed}/sub/nested.jpg") == b"NESTED"
    assert reader.read(f"{allowed}/rel_in.jpg") == b"GOOD" * 10
    assert reader.read(f"{allowed}/sub/up_in.jpg") == b"GOOD" * 10  # "../" inside a symlink, staying inside
    assert reader.read(f"{allowed}/abs_in_dir/nested.jpg") == b"NESTED"
    assert reader.read(f"{allowed}/has space %2e.jpg") == b"ODD"  # plain paths are not percent-decoded
    assert reader.read(f"file://{allowed}/has%20space%20%252e.jpg") == b"ODD"  # file URLs are, once
    assert reader.read(f"{allowed}/exact.jpg") == b"x" * CAP


def test_relative_paths_are_not_allowed(tree, monkeypatch):
    """A relative path means something else on every worker: refused even from inside the root."""
    monkeypatch.chdir(tree["allowed"])
    for uri in ("sub/nested.jpg", "./good.jpg", "good.jpg"):
        with pytest.raises(RowFailure) as caught:
            tree["reader"].read(uri)
        assert caught.value.code.value == "uri_not_allowed"


def test_inside_the_allowed_area_missing_files_say_not_found(tree):
    for name in ("missing.jpg", "dangling.jpg", "sub/missing.jpg"):
        with pytest.raises(RowFailure) as caught:
            tree["reader"].read(f"{tree['allowed']}/{name}")
        assert caught.value.code.value == "uri_not_found"


@pytest.mark.timeout(10)
@pytest.mark.parametrize("name", ["fifo.jpg", "sub", "loop_a"])
def test_non_regular_files_are_not_allowed_and_fail_fast(tree, name):
    started = time.monotonic()
    with pytest.raises(RowFailure) as caught:
        tree["reader"].read(f"{tree['allowed']}/{name}")
    assert caught.value.code.value == "uri_not_allowed"
    assert time.monotonic() - started < 2


def test_byte_cap_never_trusts_the_size(tree):
    for name in ("over.jpg", "sparse.jpg"):
        started = time.monotonic()
        with pytest.raises(RowFailure) as caught:
            tree["reader"].read(f"{tree['allowed']}/{name}")
        assert caught.value.code.value == "image_too_large"
        assert time.monotonic() - started < 2
    fd = os.open("/dev/zero", os.O_RDONLY)
    try:
        assert len(up.read_capped_fd(fd, CAP)) == CAP + 1  # an endless source stops at cap + 1
    finally:
        os.close(fd)


def test_symlink_swapped_in_after_the_check_is_not_followed(tree):
    """TOCTOU: resolve, then replace a directory by a symlink to the outside, then open."""
    allowed = tree["allowed"]
    target = tree["policy"].target(f"{allowed}/sub/nested.jpg")
    root, parts = up.resolve_local(target, tree["policy"])
    os.rename(allowed / "sub", allowed / "sub-moved")
    (tree["outside"] / "nested.jpg").write_bytes(tree["canary"])
    os.symlink(str(tree["outside"]), allowed / "sub")
    with pytest.raises(OSError):
        up.open_local(root, parts)


def test_policy_rejects_dangerous_roots(tmp_path):
    os.symlink("/proc", tmp_path / "innocent")
    bad = ["/", "/proc", "/dev", "/sys/kernel", "relative/dir", f"{tmp_path}/../x", str(tmp_path / "innocent")]
    bad += ["s3://bucket/no-trailing-slash", "https://user:pw@host/x/", "ftp://host/x/", "s3://Bad_Bucket/"]
    for prefix in bad:
        with pytest.raises(ValueError):
            UriPolicy.from_prefixes([prefix])


# ------------------------------------------------------------------------------------------------
# s3:// (decisions without I/O; reads against moto)
# ------------------------------------------------------------------------------------------------


def test_s3_decisions():
    policy = UriPolicy.from_prefixes(["s3://media-bucket/images/"])
    assert policy.target("s3://media-bucket/images/a/b.jpg") == up.S3Target("media-bucket", "images/a/b.jpg")
    assert policy.target("S3://media-bucket/images/a.jpg").key == "images/a.jpg"
    assert policy.target("s3a://media-bucket/images/a.jpg").bucket == "media-bucket"
    for uri in [
        "s3://media-bucket/images/../secrets/a.jpg",
        "s3://media-bucket/images/%2e%2e/secrets/a.jpg",
        "s3://media-bucket/images/%252e%252e/secrets/a.jpg",
        "s3://media-bucket/images/./a.jpg",
        "s3://media-bucket/imagesX/a.jpg",
        "s3://media-bucket/images",
        "s3://media-bucket/images/",
        "s3://media-bucket/secrets/a.jpg",
        "s3://other-bucket/images/a.jpg",
        "s3://MEDIA-BUCKET/images/a.jpg",
        "s3://user:secret@media-bucket/images/a.jpg",
        "s3://media-bucket:9000/images/a.jpg",
        "s3://media-bucket//images/a.jpg",
        "s3://media-bucket/images//../a.jpg",
        "s3:///media-bucket/images/a.jpg",
    ]:
        with pytest.raises(NotAllowed):
            policy.target(uri)


def test_s3_reads_are_ranged_and_capped(s3_endpoint, s3_bucket):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.put_object(Bucket=s3_bucket, Key="images/small.jpg", Body=b"S" * 100)
    client.put_object(Bucket=s3_bucket, Key="images/big.jpg", Body=b"B" * (CAP * 50))
    client.put_object(Bucket=s3_bucket, Key="secrets/key.jpg", Body=b"SECRET")
    storage = StorageConfig(endpoint_url=s3_endpoint, region="us-east-1")
    reader = UriReader(UriPolicy.from_prefixes([f"s3://{s3_bucket}/images/"]), CAP, storage)
    assert reader.read(f"s3://{s3_bucket}/images/small.jpg") == b"S" * 100
    fetched = up.read_s3(up.S3Target(s3_bucket, "images/big.jpg"), CAP, storage)
    assert len(fetched) == CAP + 1  # one ranged GET, never the whole object
    with pytest.raises(RowFailure) as caught:
        reader.read(f"s3://{s3_bucket}/images/big.jpg")
    assert caught.value.code.value == "image_too_large"
    with pytest.raises(RowFailure) as caught:
        reader.read(f"s3://{s3_bucket}/images/missing.jpg")
    assert caught.value.code.value == "uri_not_found"
    for uri in [f"s3://{s3_bucket}/secrets/key.jpg", f"s3://{s3_bucket}/images/../secrets/key.jpg"]:
        with pytest.raises(RowFailure) as caught:
            reader.read(uri)
        assert caught.value.code.value == "uri_not_allowed"


# ------------------------------------------------------------------------------------------------
# http(s):// only when listed
# ------------------------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        _Handler.hits.append(self.path)
        if self.path == "/pub/a.jpg":
            body = b"PUBLIC"
        elif self.path == "/pub/redirect.jpg":
            self.send_response(302)
            self.send_header("Location", "/private/secret.jpg")
            self.end_headers()
            return
        elif self.path == "/pub/endless.jpg":
            self.send_response(200)
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b"\0" * 65536)
            except OSError:
                return
        elif self.path.startswith("/private/"):
            body = b"PRIVATE"
        else:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def web():
    with serving(_Handler) as port:
        yield port


def test_http_only_when_listed(web):
    port = web
    reader = UriReader(UriPolicy.from_prefixes([f"http://127.0.0.1:{port}/pub/"]), CAP)
    assert reader.read(f"http://127.0.0.1:{port}/pub/a.jpg") == b"PUBLIC"
    assert reader.read(f"HTTP://127.0.0.1:{port}/pub/a.jpg") == b"PUBLIC"
    _Handler.hits.clear()
    refused = [
        f"http://127.0.0.1:{port}/private/secret.jpg",
        f"http://127.0.0.1:{port}/pub/../private/secret.jpg",
        f"http://127.0.0.1:{port}/pub/%2e%2e/private/secret.jpg",
        f"http://127.0.0.1:{port}/pub/..%2fprivate/secret.jpg",
        f"http://127.0.0.1:{port}/pub\\..\\private/secret.jpg",
        f"http://user:pw@127.0.0.1:{port}/pub/a.jpg",
        f"http://127.0.0.1@evil.example:{port}/pub/a.jpg",
        f"http://localhost:{port}/pub/a.jpg",
        f"http://127.0.0.1:{port + 1}/pub/a.jpg",
        f"https://127.0.0.1:{port}/pub/a.jpg",
        "http://169.254.169.254/latest/meta-data/",
        f"http://[::1]:{port}/pub/a.jpg",
    ]
    for uri in refused:
        with pytest.raises(RowFailure) as caught:
            reader.read(uri)
        assert caught.value.code.value == "uri_not_allowed", uri
    assert not any(hit.startswith("/private") for hit in _Handler.hits)


def test_http_redirects_are_not_followed_and_reads_are_capped(web):
    port = web
    reader = UriReader(UriPolicy.from_prefixes([f"http://127.0.0.1:{port}/pub/"]), CAP)
    _Handler.hits.clear()
    with pytest.raises(RowFailure) as caught:
        reader.read(f"http://127.0.0.1:{port}/pub/redirect.jpg")
    assert caught.value.code.value == "uri_unreadable"
    assert "/private/secret.jpg" not in _Handler.hits
    started = time.monotonic()
    with pytest.raises(RowFailure) as caught:
        reader.read(f"http://127.0.0.1:{port}/pub/endless.jpg")
    assert caught.value.code.value == "image_too_large"
    assert time.monotonic() - started < 5
    with pytest.raises(RowFailure) as caught:
        reader.read(f"http://127.0.0.1:{port}/pub/missing.jpg")
    assert caught.value.code.value == "uri_not_found"


def test_listed_name_resolving_to_loopback_is_refused(web):
    """A listed host name must not lead to internal addresses (DNS rebinding / metadata)."""
    port = web
    if socket.gethostbyname("localhost") != "127.0.0.1":
        pytest.skip("localhost does not resolve to 127.0.0.1 here")
    _Handler.hits.clear()
    listed = UriPolicy.from_prefixes([f"http://localhost:{port}/pub/"])
    with pytest.raises(RowFailure) as caught:
        UriReader(listed, CAP).read(f"http://localhost:{port}/pub/a.jpg")
    assert caught.value.code.value == "uri_not_allowed"
    assert _Handler.hits == []


def test_read_trusted_for_operator_paths(tree):
    """CLI paths: no allowlist, but still capped and still no devices, FIFOs or /proc."""
    assert up.read_trusted(f"{tree['outside']}/canary.jpg", CAP) == tree["canary"]
    for uri, code in [
        ("/dev/zero", "uri_not_allowed"),
        ("/proc/self/environ", "uri_not_allowed"),
        (f"{tree['allowed']}/zero.jpg", "uri_not_allowed"),
        (f"{tree['allowed']}/fifo.jpg", "uri_not_allowed"),
        (f"{tree['allowed']}/sparse.jpg", "image_too_large"),
        ("http://127.0.0.1/x.jpg", "uri_not_allowed"),
    ]:
        with pytest.raises(RowFailure) as caught:
            up.read_trusted(uri, CAP)
        assert caught.value.code.value == code, uri
