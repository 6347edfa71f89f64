"""A node on a full disk: a clear one-line refusal at start, no stray files."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_procs import LAUNCH, free_port

from catenary.server import datadir
from catenary.server.datadir import MARKER_NAME, DataDir, DataDirError

pytestmark = pytest.mark.timeout(60)


def test_a_marker_write_on_a_full_disk_says_disk_full_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(datadir.os, "write", full)
    with pytest.raises(DataDirError) as info:
        DataDir.open(str(tmp_path / "d"), cluster_name="c", metadata_server="replicated")
    assert "disk full" in str(info.value)
    assert sorted(os.listdir(tmp_path / "d")) == ["LOCK"]
    monkeypatch.undo()
    d = DataDir.open(str(tmp_path / "d"), cluster_name="c", metadata_server="replicated")
    assert (d.path, d.marker.cluster_name) == (str(tmp_path / "d"), "c")
    d.close()
    assert MARKER_NAME in os.listdir(tmp_path / "d")


@contextlib.contextmanager
def full_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, filled up (needs root); unmounted at the end."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small filesystem")
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
        capture_output=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr!r}")
    try:
        (mount_point / "d").mkdir()
        fd = os.open(mount_point / "fill", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * 4096):
                    pass
        finally:
            os.close(fd)
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_starting_on_a_full_disk_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    with full_filesystem(tmp_path) as small:
        data_dir = small / "d"
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                LAUNCH,
                "server",
                "--data-dir",
                str(data_dir),
                "--client-address",
                f"127.0.0.1:{free_port()}",
                "--peer-address",
                f"127.0.0.1:{free_port()}",
                "--admin-address",
                "",
                "--log-level",
                "error",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 2, done
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "disk full" in lines[0], done.stderr
        assert "Traceback" not in done.stderr
        assert [n for n in os.listdir(data_dir) if n.endswith(".tmp")] == []
