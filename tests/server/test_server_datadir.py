"""The data directory marker: created once, generation bumped, other clusters refused."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from catenary.server import datadir
from catenary.server.datadir import MARKER_NAME, DataDir, DataDirError

pytestmark = pytest.mark.timeout(30)


def test_marker_created_and_generation_persisted(tmp_path: Path) -> None:
    d = DataDir.open(str(tmp_path / "d"), cluster_name="c", metadata_server="replicated")
    assert d.marker.node_id == 0 and d.marker.generation == 0
    assert d.bump_generation() == 1
    d.update(node_id=3)
    d.close()
    again = DataDir.open(str(tmp_path / "d"), cluster_name="c", metadata_server="replicated")
    assert (again.marker.node_id, again.marker.generation) == (3, 1)
    assert again.bump_generation() == 2
    again.close()


def test_failed_marker_write_leaves_the_marker_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = DataDir.open(str(tmp_path / "d"), cluster_name="c", metadata_server="replicated")
    try:

        def failing_fsync(fd: int) -> None:
            raise OSError(errno.EIO, "simulated fsync failure")

        with monkeypatch.context() as patch:
            patch.setattr(datadir.os, "fsync", failing_fsync)
            with pytest.raises(DataDirError, match="simulated fsync failure"):
                d.update(node_id=1, founder=True)
        # Not persisted, so not believed: a retry must write it again.
        assert (d.marker.node_id, d.marker.founder) == (0, False)
    finally:
        d.close()
    again = DataDir.open(str(tmp_path / "d"), cluster_name="c", metadata_server="replicated")
    assert again.marker.node_id == 0
    again.close()


def test_short_marker_writes_are_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write

    def short_write(fd: int, data: bytes) -> int:
        return real_write(fd, bytes(data[:7]))  # at most 7 bytes per call

    d = DataDir.open(str(tmp_path / "d"), cluster_name="c", metadata_server="replicated")
    with monkeypatch.context() as patch:
        patch.setattr(datadir.os, "write", short_write)
        d.update(node_id=5)
    d.close()
    again = DataDir.open(str(tmp_path / "d"), cluster_name="c", metadata_server="replicated")
    assert again.marker.node_id == 5
    again.close()


def test_refuses_another_cluster_and_another_metadata_kind(tmp_path: Path) -> None:
    DataDir.open(str(tmp_path), cluster_name="blue", metadata_server="replicated").close()
    with pytest.raises(DataDirError, match="belongs to cluster 'blue', not 'green'"):
        DataDir.open(str(tmp_path), cluster_name="green", metadata_server="replicated")
    with pytest.raises(DataDirError, match="holds a 'replicated' metadata server"):
        DataDir.open(str(tmp_path), cluster_name="blue", metadata_server="local")


def test_second_process_on_the_same_dir_is_refused(tmp_path: Path) -> None:
    first = DataDir.open(str(tmp_path), cluster_name="c", metadata_server="replicated")
    try:
        with pytest.raises(DataDirError, match="in use by another catenary process"):
            DataDir.open(str(tmp_path), cluster_name="c", metadata_server="replicated")
    finally:
        first.close()
    DataDir.open(str(tmp_path), cluster_name="c", metadata_server="replicated").close()


def test_corrupt_marker_is_reported_not_guessed(tmp_path: Path) -> None:
    DataDir.open(str(tmp_path), cluster_name="c", metadata_server="replicated").close()
    marker = tmp_path / MARKER_NAME
    data = bytearray(marker.read_bytes())
    data[5] ^= 0x01
    marker.write_bytes(bytes(data))
    with pytest.raises(DataDirError, match="checksum mismatch"):
        DataDir.open(str(tmp_path), cluster_name="c", metadata_server="replicated")
    marker.write_bytes(b"{}")
    with pytest.raises(DataDirError, match="no checksum line"):
        DataDir.open(str(tmp_path), cluster_name="c", metadata_server="replicated")


def test_foreign_non_empty_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("not ours")
    with pytest.raises(DataDirError, match="not empty but has no"):
        DataDir.open(str(tmp_path), cluster_name="c", metadata_server="replicated")
