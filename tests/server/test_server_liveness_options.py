"""The liveness bounds of peer and client connections are server options, validated."""

from __future__ import annotations

import pytest

from catenary.server.config import ConfigError, load_config


def test_liveness_options_have_defaults_and_are_validated() -> None:
    network = load_config(env={}).network
    assert network.peer_ping_interval_ms < network.peer_idle_timeout_ms
    assert network.client_ping_interval_ms < network.client_idle_timeout_ms
    texts = {"network.peer_idle_timeout_ms": "400", "network.client_ping_interval_ms": "0"}
    with pytest.raises(ConfigError) as info:
        load_config(env={}, flag_texts=texts)
    joined = "\n".join(info.value.problems)
    assert "network.peer_idle_timeout_ms: must exceed network.peer_ping_interval_ms" in joined
    assert "network.client_ping_interval_ms: must be at least 1" in joined


def test_the_peer_link_log_interval_is_an_option() -> None:
    network = load_config(env={}).network
    assert network.transport_options().link_log_interval_ms == 10_000
    every = load_config(env={}, flag_texts={"network.peer_link_log_interval_ms": "0"})
    assert every.network.transport_options().link_log_interval_ms == 0
    with pytest.raises(ConfigError) as info:
        load_config(env={}, flag_texts={"network.peer_link_log_interval_ms": "-5"})
    assert "network.peer_link_log_interval_ms: must be 0 (every line) or positive" in "\n".join(
        info.value.problems
    )


def test_the_request_idle_bound_is_an_option() -> None:
    network = load_config(env={}, flag_texts={"network.client_request_idle_ms": "250"}).network
    assert network.client_port_options(load_config(env={}).metadata).request_idle_ms == 250
    with pytest.raises(ConfigError) as info:
        load_config(env={}, flag_texts={"network.client_request_idle_ms": "0"})
    assert "network.client_request_idle_ms: must be at least 1" in "\n".join(info.value.problems)


def test_the_disk_full_retry_interval_is_an_option() -> None:
    storage = load_config(env={}, flag_texts={"storage.disk_full_retry_ms": "250"}).storage
    assert storage.disk_full_retry_ms == 250
    with pytest.raises(ConfigError) as info:
        load_config(env={}, flag_texts={"storage.disk_full_retry_ms": "0"})
    assert "storage.disk_full_retry_ms: must be at least 1" in "\n".join(info.value.problems)
