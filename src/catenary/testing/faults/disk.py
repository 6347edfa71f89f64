"""A small filesystem per node, so one node's disk can be filled on purpose.

When the harness runs as root, each node's data directory is a ``tmpfs``
mounted with ``size=`` (default 256 MiB) that the harness mounts before the
node starts and unmounts after it stopped.  ``fill`` writes a filler file
until the filesystem answers ENOSPC (1 MiB writes, then 4 KiB ones, so the
space left is under a page); ``release`` deletes it.  Without root there is
no small filesystem, and the disk-full nemesis is skipped with that reason.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import subprocess
from pathlib import Path

FILLER = ".faults-filler"


def unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "not root: mounting a small filesystem needs CAP_SYS_ADMIN"
    return None


class SmallDisk:
    """A tmpfs of ``size_mb`` at ``path`` (see the module doc)."""

    def __init__(self, path: Path, size_mb: int = 256) -> None:
        self.path = path
        self.size_mb = size_mb
        self.mounted = False
        self.filled_bytes = 0

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "mount",
                "-t",
                "tmpfs",
                "-o",
                f"size={self.size_mb}m,mode=0700",
                "tmpfs",
                str(self.path),
            ],
            check=True,
            capture_output=True,
            timeout=20,
        )
        self.mounted = True
        atexit.register(self.unmount)

    def fill(self) -> int:
        """Write until ENOSPC; the bytes written."""
        written = 0
        path = self.path / FILLER
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for chunk in (1 << 20, 4096, 512):
                block = b"\0" * chunk
                while True:
                    try:
                        written += os.write(fd, block)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)
        self.filled_bytes += written
        return written

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.path / FILLER).unlink()
        self.filled_bytes = 0

    def unmount(self) -> None:
        if not self.mounted:
            return
        result = subprocess.run(["umount", str(self.path)], capture_output=True, timeout=20)
        if result.returncode != 0:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True, timeout=20)
        self.mounted = False
        with contextlib.suppress(Exception):
            atexit.unregister(self.unmount)
