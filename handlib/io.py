"""Atomic file writes: a reader never sees a half-written file, and a crash never destroys the old one.
Append-only JSON-lines logs: a crash mid-line loses that line only."""

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, on error remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + path.suffix)
    os.close(fd)
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; outputs are meant to be shared like any other
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def recover_jsonl(path: str | os.PathLike) -> list:
    """The records of an append-only JSON-lines file; a torn last line (a crash mid-write) is cut off the file.

    A bad line anywhere else raises ValueError naming the file and line: that is damage, not a crash.
    """
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")  # the last piece is empty, or a line torn before its newline
    records, good_end = [], 0
    for n, raw in enumerate(lines[:-1], 1):
        try:
            records.append(json.loads(raw))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} line {n}: not JSON ({err})") from None
        good_end += len(raw) + 1
    if good_end < len(data):
        os.truncate(path, good_end)
    return records
