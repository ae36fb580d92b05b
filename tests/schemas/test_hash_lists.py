"""Hash lists in a policy: the file format, every malformed line named, the content hash, S3."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
import yaml

from clipline.moderation.calibrate import calibrated_policy
from clipline.schemas.base import ConfigError
from clipline.schemas.hash_lists import MAX_LABEL_CHARS, HashListError, decode_text, parse_hash_list
from clipline.schemas.policy import Policy, load_policy, write_policy
from clipline.schemas.storage import StorageConfig

A = "f8f8f0cce0f4e84d0e370a22028f67f0b36e2ed596623e1d33e6339c4e9c9b22"
B = "0dad2599b1a1bd1853625f6553da32a1e63b7280c2374b4866b366c91bc9ce77"
C = "a5f4a457a48995e8c9065c275aaa5498b61ba4bdf8fcf80387c32f8b0bfc4f05"
CATEGORIES = [{"name": "star", "positive": ["a star"], "negative": ["a circle"], "review_threshold": 0.5}]


def policy_yaml(path: Path, *lists: dict) -> Path:
    path.write_text(yaml.safe_dump({"name": "p", "version": "1", "categories": CATEGORIES, "hash_lists": list(lists)}))
    return path


def known(uri: str, **settings) -> dict:
    return {"name": "known", "uri": uri, "action": "block", **settings}


# --------------------------------------------------------------------------- the file format
def test_formats_comments_header_quotes_and_line_endings() -> None:
    text = f'\ufeff# a comment\r\nhash,label\r\n\r\n{A}\n  {B.upper()} , csam-v3 \n"{C}", "label, with comma"\n'
    entries = parse_hash_list(text, "list.csv")
    assert entries.hashes == [A, B, C]  # upper case normalised
    assert entries.labels == ["", "csam-v3", "label, with comma"]


def test_a_header_is_only_allowed_first() -> None:
    with pytest.raises(HashListError) as error:
        parse_hash_list(f"{A}\nhash,label\n", "list.csv")
    assert [line for line, _ in error.value.errors] == [2]


def test_every_malformed_line_is_reported_with_its_number() -> None:
    lines = [
        A,  # 1 ok
        A[:-1],  # 2 short
        A + "0",  # 3 long
        A[:-1] + "g",  # 4 non-hex
        f"{A},x,y",  # 5 too many fields
        f"{B},fine",  # 6 ok
        ",label only",  # 7 no hash
        f"{C},{'x' * (MAX_LABEL_CHARS + 1)}",  # 8 label too long
        f"{A[:30]} {A[31:]}",  # 9 a space inside: 64 characters, 63 hex digits
    ]
    with pytest.raises(HashListError) as error:
        parse_hash_list("\n".join(lines), "bad.csv")
    assert [line for line, _ in error.value.errors] == [2, 3, 4, 5, 7, 8, 9]
    message = str(error.value)
    assert "bad.csv:2:" in message and "63 characters" in message
    assert "bad.csv:4:" in message and "'g'" in message
    assert "bad.csv:5:" in message and "3 fields" in message
    assert "bad.csv:9:" in message and "' '" in message


def test_the_error_message_is_bounded() -> None:
    with pytest.raises(HashListError) as error:
        parse_hash_list("\n".join(["nothex"] * 100), "big.csv")
    assert len(error.value.errors) == 100
    assert "and 80 more" in str(error.value)


def test_bytes_that_are_not_utf8_name_their_line() -> None:
    with pytest.raises(HashListError, match=r"list.csv:3: not UTF-8"):
        decode_text(f"{A}\n{B}\n{C},caf\xe9\n".encode("latin-1"), "list.csv")


def test_an_empty_list_is_a_list() -> None:
    entries = parse_hash_list("# nothing yet\n", "empty.csv")
    assert entries.hashes == [] and entries.labels == []


# --------------------------------------------------------------------------- in a policy
def test_policy_reads_the_list_relative_to_its_yaml(tmp_path) -> None:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "known.csv").write_text(f"hash,label\n{A},a\n{B},b\n")
    policy = load_policy(policy_yaml(tmp_path / "p.yaml", known("lists/known.csv", max_distance=20)))
    [spec] = policy.hash_lists
    assert spec.entries == 2
    assert Path(spec.uri) == tmp_path / "lists" / "known.csv"
    assert (spec.category, spec.action, spec.max_distance, spec.min_quality, spec.dihedral) == (
        "hash:known",
        "block",
        20,
        50,
        False,
    )


def test_a_malformed_list_fails_the_policy_naming_file_and_line(tmp_path) -> None:
    (tmp_path / "known.csv").write_text(f"{A}\n{B}\nnot-a-hash,x\n")
    with pytest.raises(ConfigError) as error:
        load_policy(policy_yaml(tmp_path / "p.yaml", known("known.csv")))
    assert "hash_lists.0" in str(error.value)
    assert f"{tmp_path / 'known.csv'}:3:" in str(error.value)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (known("missing.csv"), "missing.csv does not exist"),
        (known("https://example.com/list.csv"), "a local path or an s3:// URI"),
        ({**known("known.csv"), "action": "allow"}, "hash_lists.0.action"),
        (known("known.csv", max_distance=300), "hash_lists.0.max_distance"),
        ({**known("known.csv"), "name": "Known List"}, "hash_lists.0.name"),
        (known("known.csv", typo=1), "hash_lists.0.typo"),
    ],
)
def test_bad_list_settings_are_named(tmp_path, spec: dict, expected: str) -> None:
    (tmp_path / "known.csv").write_text(f"{A}\n")
    with pytest.raises(ConfigError, match=expected):
        load_policy(policy_yaml(tmp_path / "p.yaml", spec))


def test_list_names_are_unique(tmp_path) -> None:
    (tmp_path / "known.csv").write_text(f"{A}\n")
    with pytest.raises(ConfigError, match="duplicate hash list names"):
        load_policy(policy_yaml(tmp_path / "p.yaml", known("known.csv"), known("known.csv")))


def test_content_hash_follows_the_list_contents_not_its_path(tmp_path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "known.csv").write_text(f"{A},a\n")
    first = load_policy(policy_yaml(tmp_path / "a" / "p.yaml", known("known.csv")))
    without = Policy.model_validate({"name": "p", "version": "1", "categories": CATEGORIES})
    assert first.content_hash != without.content_hash
    assert "hash_lists" not in without.canonical()  # policies without lists hash as they always did
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "renamed.csv").write_text(f"{A},a\n")
    moved = load_policy(policy_yaml(tmp_path / "b" / "p.yaml", known("renamed.csv")))
    assert moved.content_hash == first.content_hash
    (tmp_path / "b" / "renamed.csv").write_text(f"{A},a\n{B},b\n")
    grown = load_policy(tmp_path / "b" / "p.yaml")
    assert grown.content_hash != first.content_hash
    stricter = load_policy(policy_yaml(tmp_path / "b" / "p2.yaml", known("renamed.csv", max_distance=10)))
    assert stricter.content_hash != grown.content_hash


def test_written_policy_keeps_its_list_and_hash(tmp_path) -> None:
    (tmp_path / "known.csv").write_text(f"{A},a\n")
    original = load_policy(policy_yaml(tmp_path / "p.yaml", known("known.csv", dihedral=True)))
    written = write_policy(original, tmp_path / "out" / "p.yaml")
    assert yaml.safe_load(written.read_text())["hash_lists"][0]["uri"] == "../known.csv"
    assert load_policy(written).content_hash == original.content_hash


def test_a_worker_refuses_a_list_that_changed_after_the_check(tmp_path) -> None:
    (tmp_path / "known.csv").write_text(f"{A},a\n")
    [spec] = load_policy(policy_yaml(tmp_path / "p.yaml", known("known.csv"))).hash_lists
    assert spec.read(StorageConfig()).hashes == [A]
    (tmp_path / "known.csv").write_text(f"{A},a\n{B},b\n")
    with pytest.raises(ConfigError, match="changed after the policy was checked"):
        spec.read(StorageConfig())


def test_a_list_on_s3_loads_with_the_storage_settings(tmp_path, s3_endpoint, s3_bucket) -> None:
    body = f"hash,label\n{A},from-s3\n{B},also\n"
    boto3.client("s3", endpoint_url=s3_endpoint).put_object(Bucket=s3_bucket, Key="lists/known.csv", Body=body)
    uri = f"s3://{s3_bucket}/lists/known.csv"
    storage = StorageConfig(endpoint_url=s3_endpoint, region="us-east-1")
    policy = load_policy(policy_yaml(tmp_path / "p.yaml", known(uri)), storage)
    [spec] = policy.hash_lists
    assert spec.uri == uri and spec.entries == 2
    entries = spec.read(storage)
    assert entries.hashes == [A, B] and entries.labels == ["from-s3", "also"]
    revised = calibrated_policy(policy, {}, "2", storage)  # a new version validates the lists again, on S3
    assert revised.hash_lists[0].sha256 == spec.sha256 and revised.content_hash != policy.content_hash
    boto3.client("s3", endpoint_url=s3_endpoint).put_object(Bucket=s3_bucket, Key="lists/known.csv", Body="zz\n" * 2)
    with pytest.raises(ConfigError, match=rf"{uri}:2:"):
        load_policy(tmp_path / "p.yaml", storage)
    with pytest.raises(ConfigError, match="does not exist"):
        load_policy(policy_yaml(tmp_path / "p.yaml", known(f"s3://{s3_bucket}/lists/absent.csv")), storage)
