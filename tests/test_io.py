import os

import pytest

from handlib.io import atomic_path, atomic_write_text


def test_atomic_write_replaces_and_keeps_normal_permissions(tmp_path):
    path = tmp_path / "a" / "out.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    umask = os.umask(0)
    os.umask(umask)
    assert path.read_text() == "two"
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in path.parent.iterdir()] == ["out.txt"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
