"""Configuration: defaults, sources and their precedence, one clear message per bad value."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

from catenary.cli.server import server as server_command
from catenary.core.raft.types import RaftConfig
from catenary.server.config import (
    RAFT_CORE_NAMES,
    ConfigError,
    RaftSection,
    ServerConfig,
    env_names,
    load_config,
    option_types,
    parse_text,
    to_toml,
)

pytestmark = pytest.mark.timeout(30)


def problems_of(**kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(**kwargs)  # type: ignore[arg-type]
    return info.value.problems


def test_defaults_are_a_replicated_cluster_of_one() -> None:
    config = load_config(env={})
    assert config == ServerConfig()
    assert config.metadata.server == "replicated"
    assert config.seeds == []
    assert config.provision_automatically
    assert not load_config(env={}, flags={"production": True}).provision_automatically
    # An explicit choice wins over the production default.
    explicit = load_config(env={}, flags={"production": True, "auto_provision": True})
    assert explicit.provision_automatically


def test_every_option_has_one_distinct_environment_variable() -> None:
    names = env_names()
    assert len(names) == len(option_types())
    assert names["CATENARY_CLUSTER_NAME"] == "cluster_name"
    assert names["CATENARY_DATA_DIR"] == "data_dir"
    assert names["CATENARY_METADATA_SERVER"] == "metadata.server"
    assert names["CATENARY_RAFT_TICK_MS"] == "raft.tick_ms"


def test_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        'cluster_name = "from-file"\ndata_dir = "/file"\n[raft]\ntick_ms = 11\nelection_timeout_ticks = 12\n'
    )
    env = {"CATENARY_DATA_DIR": "/env", "CATENARY_RAFT_TICK_MS": "22", "CATENARY_ADDRESS": "x"}
    config = load_config(
        str(path),
        env=env,
        flags={"data_dir": "/flag"},
        flag_texts={"raft.election_timeout_ticks": "30"},
    )
    assert config.cluster_name == "from-file"  # file over default
    assert config.raft.tick_ms == 22  # env over file
    assert config.data_dir == "/flag"  # flag over env
    assert config.raft.election_timeout_ticks == 30  # --set over file


def test_text_values_are_parsed_by_type() -> None:
    env = {
        "CATENARY_SEEDS": "127.0.0.1:1, 127.0.0.1:2,",
        "CATENARY_PRODUCTION": "yes",
        "CATENARY_RAFT_COMPACT_AFTER_ENTRIES": "1_000",
        "CATENARY_AUTO_PROVISION": "auto",
    }
    config = load_config(env=env)
    assert config.seeds == ["127.0.0.1:1", "127.0.0.1:2"]
    assert config.production is True
    assert config.raft.compact_after_entries == 1000
    assert config.auto_provision is None
    assert parse_text("off", bool) is False
    with pytest.raises(ValueError, match="boolean"):
        parse_text("maybe", bool)


def test_every_bad_value_gets_its_own_line() -> None:
    problems = problems_of(
        env={
            "CATENARY_RAFT_TICK_MS": "abc",
            "CATENARY_METADATA_SERVER": "etcd",
            "CATENARY_CLUSTER_NAME": "a b",
            "CATENARY_SEEDS": "nohost,127.0.0.1:99999",
        },
        flag_texts={"raft.no_such_option": "1"},
    )
    assert problems == [
        "raft.tick_ms: expected an integer, got 'abc' (environment CATENARY_RAFT_TICK_MS)",
        "raft.no_such_option: unknown option (flag --set)",
        "cluster_name: must be 1-64 characters of letters, digits, '.', '_' or '-', "
        "got 'a b' (environment CATENARY_CLUSTER_NAME)",
        "seeds: each seed: expected host:port, got 'nohost' (environment CATENARY_SEEDS)",
        "seeds: each seed: the port must be between 1 and 65535, got '127.0.0.1:99999' "
        "(environment CATENARY_SEEDS)",
        'metadata.server: expected "replicated" or "local", got \'etcd\' '
        "(environment CATENARY_METADATA_SERVER)",
    ]


def test_file_problems_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        'roles = ["metadata-server", "juggler"]\nwat = 1\n[raft]\ntick_ms = "fast"\n'
        "heartbeat_interval_ticks = 10\n[metadata]\nserver = 3\n"
    )
    problems = problems_of(path=str(path), env={})
    src = f"(file {path})"
    assert f"raft.tick_ms: expected an integer, got 'fast' {src}" in problems
    assert f"wat: unknown option {src}" in problems
    assert f"metadata.server: expected a string, got 3 {src}" in problems
    assert any(p.startswith("roles: unknown role") and "'juggler'" in p for p in problems)
    # The interval that was set is at fault, not the timeout left at its default.
    assert (
        f"raft.heartbeat_interval_ticks: must be below raft.election_timeout_ticks (10), "
        f"got 10 {src}" in problems
    )
    assert len(problems) == 5


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    assert problems_of(path=str(missing), env={})[0].startswith(
        f"config file {missing}: cannot read"
    )
    broken = tmp_path / "broken.toml"
    broken.write_text("cluster_name = \n")
    assert "not valid TOML" in problems_of(path=str(broken), env={})[0]


def test_semantic_checks() -> None:
    problems = problems_of(
        env={},
        flags={
            "peer_address": "127.0.0.1:5000",
            "client_address": "127.0.0.1:5000",
            "metadata.server": "local",
            "seeds": ["127.0.0.1:6000"],
        },
        flag_texts={"raft.tick_ms": "0", "metadata.batch_max": "50000", "join.timeout_ms": "-1"},
    )
    joined = "\n".join(problems)
    assert "client_address: peer, client and admin addresses must differ" in joined
    assert 'seeds: a node with metadata.server = "local" cannot join a cluster' in joined
    assert "raft.tick_ms: must be between 1 and 60000, got 0" in joined
    assert "metadata.batch_max: must not exceed metadata.queue_max" in joined
    assert "join.timeout_ms: must be 0 (no limit) or positive" in joined


def test_a_key_and_value_must_fit_in_one_stored_record() -> None:
    problems = problems_of(env={}, flag_texts={"storage.record_bytes_max": "65536"})
    # The record bound that was set is at fault, not the value bound left at its default.
    assert problems == [
        "storage.record_bytes_max: must hold a key and a value of the largest size "
        "(metadata.key_bytes_max 4096 + metadata.value_bytes_max 1048576 + 1024), "
        "got 65536 (flag --set)"
    ]
    problems = problems_of(env={}, flag_texts={"metadata.value_bytes_max": str(64 << 20)})
    assert problems == [
        "metadata.value_bytes_max: a key and value must fit in one frame and one stored "
        "record: network.frame_bytes_max (16777216), got 67108864 (flag --set)"
    ]
    load_config(env={}, flag_texts={"storage.record_bytes_max": str(2 << 20)})


def test_toml_round_trip(tmp_path: Path) -> None:
    config = load_config(
        env={},
        flags={"seeds": ["127.0.0.1:7"], "production": True, "node_name": 'quote"d'},
        flag_texts={"raft.tick_ms": "7"},
    )
    path = tmp_path / "out.toml"
    path.write_text(to_toml(config))
    assert load_config(str(path), env={}) == config
    path.write_text(to_toml(config, only_changed=True))
    assert load_config(str(path), env={}) == config


def test_cli_reports_every_problem_and_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        server_command,
        ["--metadata-server", "nope", "--set", "raft.tick_ms=x", "--set", "junk"],
        env={"CATENARY_DATA_DIR": ""},
    )
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "catenary server: --set 'junk': expected OPTION=VALUE",
        "catenary server: raft.tick_ms: expected an integer, got 'x' (flag --set)",
        "catenary server: data_dir: must not be empty, got '' (environment CATENARY_DATA_DIR)",
        'catenary server: metadata.server: expected "replicated" or "local", got \'nope\' (flag)',
    ]


def test_cli_print_config_applies_flags_and_env(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        server_command,
        ["--print-config", "--seed", "127.0.0.1:9,127.0.0.1:10", "--production"],
        env={"CATENARY_CLUSTER_NAME": "blue"},
    )
    assert result.exit_code == 0, result.output
    printed = tmp_path / "printed.toml"
    printed.write_text(result.output)
    config = load_config(str(printed), env={})
    assert config.cluster_name == "blue"
    assert config.seeds == ["127.0.0.1:9", "127.0.0.1:10"]
    assert config.production and not config.provision_automatically


def test_every_raft_core_bound_is_a_server_option_with_the_core_default() -> None:
    options = RaftSection()
    core = RaftConfig()
    assert sorted(RAFT_CORE_NAMES.values()) == sorted(RaftConfig.__struct_fields__)
    for option, field in RAFT_CORE_NAMES.items():
        assert getattr(options, option) == getattr(core, field), option
    assert options.options() == core
    tuned = msgspec.structs.replace(options, read_rounds_in_flight_max=7, lease_reads=True)
    assert tuned.options().max_read_rounds_in_flight == 7
    assert tuned.options().lease_reads is True


def test_several_bad_values_each_reported_once_naming_the_one_at_fault() -> None:
    problems = problems_of(
        env={"CATENARY_RAFT_HEARTBEAT_INTERVAL_TICKS": "20"},
        flag_texts={"raft.tick_ms": "0", "metadata.key_bytes_max": str(40 << 20)},
    )
    assert problems == [
        "raft.tick_ms: must be between 1 and 60000, got 0 (flag --set)",
        "raft.heartbeat_interval_ticks: must be below raft.election_timeout_ticks (10), "
        "got 20 (environment CATENARY_RAFT_HEARTBEAT_INTERVAL_TICKS)",
        "metadata.key_bytes_max: a key and value must fit in one frame and one stored record: "
        "network.frame_bytes_max (16777216), got 41943040 (flag --set)",
    ]


def test_queue_relations_blame_the_option_that_was_set() -> None:
    problems = problems_of(env={}, flag_texts={"metadata.queue_max": "10"})
    assert problems == [
        "metadata.queue_max: must be at least metadata.batch_max (4096), got 10 (flag --set)"
    ]
    problems = problems_of(env={}, flag_texts={"network.reconnect_backoff_ms_max": "10"})
    assert problems == [
        "network.reconnect_backoff_ms_max: must be at least network.reconnect_backoff_ms_min "
        "(50), got 10 (flag --set)"
    ]


def test_renamed_bounds_are_still_read_under_their_old_names(tmp_path: Path) -> None:
    path = tmp_path / "old.toml"
    path.write_text("[raft]\nmax_pending_proposals = 7\n")
    config = load_config(
        str(path),
        env={"CATENARY_RAFT_MAX_PENDING_READS": "8"},
        flag_texts={"network.reconnect_backoff_max_ms": "3000"},
    )
    assert config.raft.pending_proposals_max == 7
    assert config.raft.pending_reads_max == 8
    assert config.network.reconnect_backoff_ms_max == 3000
    assert "max_pending" not in to_toml(config)


def test_sections_map_to_their_components_options() -> None:
    config = load_config(
        env={},
        flag_texts={
            "raft.pending_proposals_max": "5",
            "network.peer_send_queue_max": "9",
            "network.peer_send_queue_age_ms_max": "700",
            "storage.segment_bytes_max": str(1 << 20),
            "metadata.batch_max": "4000",
        },
    )
    assert config.metadata.replica_options(config.raft).max_pending_writes == 5
    assert config.network.transport_options().send_queue_messages_max == 9
    assert config.network.transport_options().send_queue_age_max_ms == 700
    assert config.storage.options().segment_bytes_max == 1 << 20
    assert config.metadata.host_options(config.raft).batch_max == 4000
    local = config.metadata.local_host_options(config.raft, config.storage)
    assert local.batch_max == 1024 and local.segment_bytes_max == 1 << 20
    port = config.network.client_port_options(config.metadata)
    assert port.watches_max == config.metadata.watches_per_connection_max


def test_the_raft_timing_rule_is_the_cores_and_reported_once() -> None:
    both = {"raft.election_timeout_ticks": "3", "raft.heartbeat_interval_ticks": "3"}
    assert problems_of(env={}, flag_texts=both) == [
        "raft.heartbeat_interval_ticks: must be below raft.election_timeout_ticks (3), "
        "got 3 (flag --set)"
    ]
    assert problems_of(env={}, flag_texts={"raft.election_timeout_ticks": "2"}) == [
        "raft.election_timeout_ticks: must exceed raft.heartbeat_interval_ticks (2), "
        "got 2 (flag --set)"
    ]
    assert problems_of(env={}, flag_texts={"raft.heartbeat_interval_ticks": "0"}) == [
        "raft.heartbeat_interval_ticks: must be at least 1, got 0 (flag --set)"
    ]
    # What the server accepts, the core accepts, and the other way round.
    assert load_config(env={}).raft.options().problems() == []
