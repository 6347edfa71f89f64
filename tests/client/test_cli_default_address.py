"""With no --address and no CATENARY_ADDRESS, the CLI finds the cluster that `make run` started."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from catenary.cli import admin


def test_falls_back_to_the_fixed_default_without_a_dev_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert admin.default_addresses() == [admin.ADDRESS_DEFAULT]


def test_uses_every_node_of_the_dev_cluster_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".catenary-dev").mkdir()
    layout = {
        "cluster_name": "catenary-dev",
        "nodes": [
            {"node": 1, "client_address": "127.0.0.1:4001"},
            {"node": 2, "client_address": "127.0.0.1:4002"},
        ],
    }
    (tmp_path / ".catenary-dev" / "cluster.json").write_text(json.dumps(layout))
    assert admin.default_addresses() == ["127.0.0.1:4001", "127.0.0.1:4002"]
    options = admin.make_options((), False, 1.0, None)
    assert options.addresses == ["127.0.0.1:4001", "127.0.0.1:4002"]


def test_a_damaged_dev_cluster_file_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".catenary-dev").mkdir()
    (tmp_path / ".catenary-dev" / "cluster.json").write_text("{not json")
    with pytest.raises(SystemExit) as exited:
        admin.default_addresses()
    assert exited.value.code == admin.EXIT_USAGE
