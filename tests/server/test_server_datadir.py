"""The data directory marker: created once, generation bumped, other clusters refused."""

from __future__ import annotations

from pathlib import Path

import pytest

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
