"""node.files: the one atomic write (a sibling temporary file, then a rename)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from node.files import atomic_file, write_atomically


def test_atomic_write_replaces_the_file_and_leaves_nothing_beside_it(tmp_path: Path) -> None:
    target = tmp_path / "meta.json"
    target.write_text("old")
    write_atomically(target, "névé\n")
    assert target.read_bytes() == "névé\n".encode()
    write_atomically(target, b"\x00\x01", durable=True)
    assert target.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json"]


def test_atomic_write_that_fails_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "result.dcm"
    target.write_bytes(b"complete")
    with pytest.raises(RuntimeError, match="half way"), atomic_file(target) as handle:
        handle.write(b"half")
        raise RuntimeError("half way")
    assert target.read_bytes() == b"complete"
    assert [p.name for p in tmp_path.iterdir()] == ["result.dcm"]


def test_atomic_file_is_created_as_open_would_create_it(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_atomically(tmp_path / "a.txt", "a")
        with atomic_file(tmp_path / "b.dcm", mode=0o600, prefix=".incoming-", suffix=".tmp") as f:
            f.write(b"b")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.dcm").stat().st_mode) == 0o600


def test_atomic_write_into_a_missing_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomically(tmp_path / "absent" / "x.json", "{}")
