"""Fixtures of the server tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from server_procs import NodeProcess


@pytest.fixture
def nodes() -> Iterator[list[NodeProcess]]:
    """Every NodeProcess appended here is killed by PID at the end of the test."""
    started: list[NodeProcess] = []
    try:
        yield started
    finally:
        for node in started:
            node.kill()
