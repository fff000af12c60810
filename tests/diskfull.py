"""A full disk for tests: a real small tmpfs where ``mount`` works, else injected errors.

Tests run as root here, and root ignores file permissions (``chmod 0o555`` does not make a
directory read-only for it), so a read-only or full spool is made by injecting the
``OSError`` at the spool's write call (:class:`InjectedDisk`), or, where this process may
mount file systems, with a real tmpfs of a few MB (:func:`tmpfs`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from prefect_genopt import spool


class InjectedDisk:
    """Replaces the spool's write call: while :attr:`error` is set, writes fail with it.

    With :attr:`partial` set, a failing write first writes that many bytes (a short
    write, then the error), which is what a disk filling up mid-write does.
    """

    def __init__(self) -> None:
        self.error: int | None = None
        self.partial = 0
        self.failures = 0

    def write(self, fd: int, data: memoryview) -> int:
        if self.error is None:
            return os.write(fd, data)
        if self.partial and len(data) > self.partial:
            n = os.write(fd, data[: self.partial])
            self.partial = 0
            return n
        self.failures += 1
        raise OSError(self.error, os.strerror(self.error))

    def full(self) -> None:
        self.error = errno.ENOSPC

    def read_only(self) -> None:
        self.error = errno.EROFS

    def ok(self) -> None:
        self.error = None


def inject(monkeypatch: pytest.MonkeyPatch) -> InjectedDisk:
    """Route the spool's writes through a new :class:`InjectedDisk` (writing normally until
    told otherwise); for a test module's ``disk`` fixture."""
    d = InjectedDisk()
    monkeypatch.setattr(spool, "_write", d.write)
    return d


@contextlib.contextmanager
def tmpfs(path: Path, size_mb: float) -> Iterator[Path]:
    """Mount a tmpfs of ``size_mb`` at ``path`` for the block (skips the test if this
    process may not mount)."""
    path.mkdir(parents=True, exist_ok=True)
    size = f"{int(size_mb * 1024)}k"
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        spool.close_all()
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def resize(path: Path, size_mb: float) -> None:
    """Give a mounted tmpfs another size (more room: the disk was cleaned up)."""
    size = f"{int(size_mb * 1024)}k"
    subprocess.run(
        ["mount", "-o", f"remount,size={size}", str(path)], check=True, capture_output=True
    )


def fill(path: Path, leave_bytes: int = 0) -> Path:
    """Fill the file system of ``path`` with one ballast file, leaving about ``leave_bytes``."""
    ballast = path / "ballast.bin"
    free = os.statvfs(path).f_bavail * os.statvfs(path).f_frsize
    with open(ballast, "wb", buffering=0) as fh:
        left = max(0, free - leave_bytes)
        chunk = b"\0" * (1024 * 1024)
        while left > 0:
            try:
                left -= fh.write(chunk[: min(len(chunk), left)])
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    break
                raise
    return ballast
