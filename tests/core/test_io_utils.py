"""core.io_utils: atomic writes (no partial file, no temp file left) and fingerprints."""

from __future__ import annotations

import json

import pytest

from starft_pipeline.core.io_utils import atomic_path, atomic_write_json, atomic_write_text, file_digest, fingerprint


def test_an_atomic_write_replaces_the_file_whole(tmp_path):
    target = tmp_path / "sub" / "out.json"
    atomic_write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    atomic_write_text(target, "second")
    assert target.read_text() == "second" and [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("before")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "before" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_fingerprints_are_stable_short_and_sensitive():
    key = fingerprint({"b": 2, "a": 1}, [1, 2])
    assert key == fingerprint({"a": 1, "b": 2}, [1, 2]) and len(key) == 16
    assert key != fingerprint({"a": 1, "b": 2}, [2, 1])


def test_a_file_digest_follows_its_bytes(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.write_bytes(b"x" * 10)
    second.write_bytes(b"x" * 10)
    assert file_digest(first) == file_digest(second)
    second.write_bytes(b"y")
    assert file_digest(first) != file_digest(second)
