"""Artifact manifests (sha256sum output) and version pruning."""

import hashlib

import pytest
from ansible_collections.deepseek.cluster.plugins.module_utils.triton_artifacts import (
    ArtifactError,
    manifest_dirs,
    mismatched,
    parse_manifest,
    versions_to_remove,
)

A = hashlib.sha256(b"a").hexdigest()
B = hashlib.sha256(b"b").hexdigest()


def test_sha256sum_output_text_and_binary_mode_with_comments():
    text = f"# DeepSeek-V3 FP8\n{A}  config.json\n\n{B.upper()} *model-00001-of-00163.safetensors\r\n"
    assert parse_manifest(text) == [
        {"path": "config.json", "sha256": A},
        {"path": "model-00001-of-00163.safetensors", "sha256": B},
    ]


def test_nested_paths_give_their_directories_parents_first():
    files = parse_manifest(f"{A}  engine/rank0.engine\n{B}  tokenizer/sub/vocab.json\n{A}  tokenizer/merges.txt\n")
    assert manifest_dirs(files) == ["engine", "tokenizer", "tokenizer/sub"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"{A}  /etc/passwd", "leaves the version directory"),
        (f"{A}  ../../x", "leaves the version directory"),
        (f"{A}  a/../../x", "leaves the version directory"),
        (f"{A}  .published", "hidden path"),
        (f"{A}  a\n{B}  ./a", "listed twice"),
        (f"{A[:60]}  a", "not '<sha256>  <path>'"),
        ("# nothing\n", "lists no file"),
    ],
)
def test_unsafe_or_malformed_manifests_are_refused(text, message):
    with pytest.raises(ArtifactError, match=message):
        parse_manifest(text)


def test_old_versions_beyond_keep_are_removed_but_never_the_current_one():
    assert versions_to_remove(["1", "2", "3", "4", ".staging-5", "x"], current=4, keep=2) == ["1", "2"]
    # Rolled back to 1 while 2-4 are on disk: 1 stays.
    assert versions_to_remove(["1", "2", "3", "4"], current=1, keep=1) == ["2", "3"]
    assert versions_to_remove(["1"], current=1, keep=3) == []
    with pytest.raises(ArtifactError, match="triton_server_keep_versions"):
        versions_to_remove(["1"], current=1, keep=0)


def test_a_missing_or_different_staged_file_is_reported():
    results = [
        {"item": {"path": "a", "sha256": A}, "stat": {"exists": True, "checksum": A}},
        {"item": {"path": "b", "sha256": B}, "stat": {"exists": True, "checksum": A}},
        {"item": {"path": "c", "sha256": B}, "stat": {"exists": False}},
    ]
    assert mismatched(results) == ["b", "c"]
