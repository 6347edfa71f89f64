"""A node on a full disk: a clear one-line refusal at start, no stray files."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_procs import LAUNCH, NodeProcess, free_port

from catenary.client import DiskFullError, IndeterminateError, SyncClient
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


def _admin_get(address: str, path: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_a_node_whose_disk_fills_keeps_serving_and_resumes_writes(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small filesystem")
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount_point)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr!r}")
    try:
        node = NodeProcess(tmp_path / "n", "--set", "storage.disk_full_retry_ms=50")
        node.data_dir = mount_point / "data"
        nodes.append(node)
        node.start()
        node.wait_serving()
        with SyncClient([node.client_address], timeout_s=5) as client:
            client.metadata.put("/kept", b"before")
            # Fill the filesystem: the next segment preallocation cannot get space.
            filler = mount_point / "filler"
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                with contextlib.suppress(OSError):
                    while os.write(fd, b"\0" * (1 << 20)):
                        pass
            finally:
                os.close(fd)
            big = b"x" * (1000 << 10)
            outcomes: list[str] = []
            for i in range(12):  # past the preallocated part of the segment
                try:
                    client.metadata.put(f"/big{i}", big, timeout_s=2)
                    outcomes.append("ok")
                except DiskFullError:
                    outcomes.append("disk_full")
                    break
                except IndeterminateError:
                    outcomes.append("indeterminate")  # the write whose save hit the full disk
            assert outcomes[-1] == "disk_full", outcomes
            assert node.process is not None and node.process.poll() is None, node.log()
            kv = client.metadata.get("/kept", stale=True)
            assert kv is not None and kv.value == b"before"
            assert _admin_get(node.admin_address, "/health") == 200
            assert _admin_get(node.admin_address, "/ready") == 503
            assert "No space left" in client.status().disk_full
            assert "CRITICAL" not in node.log()
            # Space returns: writes resume by themselves, nothing acknowledged is lost.
            filler.unlink()
            deadline = time.monotonic() + 20
            while True:
                try:
                    client.metadata.put("/after", b"space", timeout_s=2)
                    break
                except (DiskFullError, IndeterminateError):
                    assert time.monotonic() < deadline, node.log()
            kv = client.metadata.get("/kept")
            assert kv is not None and kv.value == b"before"
            for i, outcome in enumerate(outcomes):
                if outcome == "ok":
                    stored = client.metadata.get(f"/big{i}")
                    assert stored is not None and stored.value == big
            assert _admin_get(node.admin_address, "/ready") == 200
            assert client.status().disk_full == ""
        assert node.terminate() == 0
    finally:
        for started in nodes:
            started.kill()
        subprocess.run(["umount", str(mount_point)], check=False)
