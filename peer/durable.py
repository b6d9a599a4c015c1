"""Files a process reads back after a crash: written whole or not at all.

`atomic_write` writes a temporary file beside the target, fsyncs it and renames it over the
target (then fsyncs the directory), so a reader finds the old content or the new, never part of
it. `append_line` adds one line with a single write() to a file opened for appending; a reader
skips a last line without its newline (`read_lines`).
"""

from __future__ import annotations

import os
from pathlib import Path

from peer.faults import fault


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | str, point: str = "") -> None:
    """Replace `path` with `data` atomically. `point` names the fault point halfway through."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(raw[: len(raw) // 2])
        if point:
            f.flush()
            fault(point)
        f.write(raw[len(raw) // 2 :])
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    _fsync_dir(path.parent)


def append_line(path: Path, line: str) -> None:
    """Append `line` and a newline in one write() (no fsync: it survives the process, not the machine)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode())
    finally:
        os.close(fd)


def read_lines(path: Path) -> list[str]:
    """The complete lines of `path` (none if it does not exist); a torn last line is left out."""
    if not Path(path).exists():
        return []
    text = Path(path).read_text()
    lines = text.split("\n")
    return [line for line in lines[:-1] if line]
