"""Commands given several addresses ask them at once: a black hole costs only its row."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from catenary.cli.main import cli

from .fakenode import FakeNode

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def nodes() -> Iterator[list[FakeNode]]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    fakes = [
        asyncio.run_coroutine_threadsafe(FakeNode("c", node_id=i).start(), loop).result(5)
        for i in (2, 3)
    ]
    try:
        yield fakes
    finally:
        for fake in fakes:
            asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@pytest.fixture
def hole() -> Iterator[str]:
    """A listening socket that never accepts: connects complete, nothing ever answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def addresses(hole: str, nodes: list[FakeNode]) -> str:
    return ",".join([hole, *(n.address for n in nodes)])


def test_status_with_a_black_hole_first_prints_the_other_rows(
    hole: str, nodes: list[FakeNode]
) -> None:
    args = ["status", "--address", addresses(hole, nodes), "--timeout", "1"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 3, result.stderr  # documented: a node did not answer
    rows = result.stdout.splitlines()
    assert rows[0].startswith("NODE")
    for node in nodes:
        assert any(r.split()[0] == str(node.node_id) and node.address in r for r in rows)
    assert any("unreachable" in r and hole in r for r in rows)
    assert f"{hole} is unreachable" in result.stderr


def test_status_json_marks_the_black_hole_unreachable_with_its_reason(
    hole: str, nodes: list[FakeNode]
) -> None:
    args = ["status", "--json", "--address", addresses(hole, nodes), "--timeout", "1"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 3
    report = {n["address"]: n for n in json.loads(result.stdout)["nodes"]}
    assert not report[hole]["reachable"] and report[hole]["error"]
    assert all(report[n.address]["reachable"] for n in nodes)


def test_other_commands_work_through_a_black_hole_first(hole: str, nodes: list[FakeNode]) -> None:
    for args in (["nodes", "list", "--json"], ["metadata", "put", "/k", "v"]):
        result = CliRunner().invoke(
            cli, [*args, "--address", addresses(hole, nodes), "--timeout", "1"]
        )
        assert result.exit_code == 0, (args, result.stderr)


def test_status_waits_for_the_other_rows_only_the_node_timeout(
    hole: str, nodes: list[FakeNode]
) -> None:
    args = ["status", "--address", addresses(hole, nodes), "--timeout", "20"]
    result = CliRunner().invoke(cli, [*args, "--node-timeout", "0.3"])
    assert result.exit_code == 3
    assert f"{hole} is unreachable: no answer within 0.3s" in result.stderr
