"""The CLI faces against a fake node running in a background thread."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from catenary.api import messages as m
from catenary.cli.main import cli

from .fakenode import FakeNode

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def node() -> Iterator[FakeNode]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    fake = asyncio.run_coroutine_threadsafe(FakeNode(cluster_name="c").start(), loop).result(5)
    try:
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def invoke(node: FakeNode, *args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        cli, [*args, "--address", node.address, "--timeout", "1"], input=stdin
    )
    return result.exit_code, result.stdout, result.stderr


def test_put_get_list_delete(node: FakeNode) -> None:
    code, out, _ = invoke(node, "metadata", "put", "/a", "hello")
    assert code == 0 and "version 1" in out
    code, out, _ = invoke(node, "metadata", "put", "/b", "-", stdin=b"\xff\x00")
    assert code == 0
    code, out, _ = invoke(node, "metadata", "get", "/a")
    assert code == 0 and "hello" in out and "VERSION" in out
    code, out, _ = invoke(node, "metadata", "get", "/b", "--json")
    data = json.loads(out)
    assert code == 0 and data["kv"]["value"] is None and data["kv"]["value_base64"] == "/wA="
    code, out, _ = invoke(node, "metadata", "list", "/", "--json")
    assert code == 0 and [kv["key"] for kv in json.loads(out)["kvs"]] == ["/a", "/b"]
    code, out, _ = invoke(node, "metadata", "list", "/")
    assert code == 0 and "0xff00" in out
    code, out, _ = invoke(node, "metadata", "delete", "/a", "--json")
    assert code == 0 and json.loads(out)["revision"] == 3


def test_exit_codes(node: FakeNode) -> None:
    invoke(node, "metadata", "put", "/a", "1")
    # 1: operation failed
    code, _, err = invoke(node, "metadata", "put", "/a", "2", "--if-absent")
    assert code == 1 and "version 1" in err and err.count("\n") == 1
    code, _, err = invoke(node, "metadata", "get", "/missing")
    assert code == 1 and "not found" in err
    # 2: usage / bad input
    code, _, _ = invoke(node, "metadata", "put", "/a", "2", "--if-absent", "--if-version", "1")
    assert code == 2
    code, _, _ = invoke(node, "metadata", "put", "/a", "2", "--if-version", "-1")
    assert code == 2
    result = CliRunner().invoke(cli, ["metadata", "get", "/a", "--address", "nonsense"])
    assert result.exit_code == 2 and "bad address" in result.stderr
    # 4: indeterminate
    node.hook = lambda req: (
        m.ErrorReply(req.id, m.ErrorCode.INDETERMINATE, "leader lost")
        if isinstance(req, m.Put)
        else None
    )
    code, _, err = invoke(node, "metadata", "put", "/a", "3")
    assert code == 4 and "may or may not" in err
    # 3: unavailable / timed out
    node.hook = lambda req: m.ErrorReply(req.id, m.ErrorCode.UNAVAILABLE, "no quorum")
    code, _, err = invoke(node, "metadata", "get", "/a")
    assert code == 3 and "no quorum" in err


def test_delete_of_an_absent_key_says_so_and_spends_no_revision(node: FakeNode) -> None:
    invoke(node, "metadata", "put", "/a", "1")
    code, out, err = invoke(node, "metadata", "delete", "/missing")
    assert code == 1 and out == ""
    assert "'/missing' not found: nothing deleted" in err and err.count("\n") == 1
    assert node.revision == 1
    code, out, _ = invoke(node, "metadata", "delete", "/a", "--json")
    assert code == 0 and json.loads(out)["revision"] == 2


def test_status_warns_of_a_node_whose_disk_is_full(node: FakeNode) -> None:
    node.disk_full = "No space left on device"
    code, out, err = invoke(node, "status")
    assert code == 0 and "disk full" in err and "writes refused" in err
    code, out, _ = invoke(node, "status", "--json")
    assert json.loads(out)["nodes"][0]["status"]["disk_full"] == "No space left on device"


def test_unreachable_cluster_exits_3() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    result = CliRunner().invoke(cli, ["status", "--address", address, "--timeout", "0.3"])
    assert result.exit_code == 3


def test_address_from_the_environment(node: FakeNode) -> None:
    result = CliRunner().invoke(
        cli, ["metadata", "put", "/e", "v", "--json"], env={"CATENARY_ADDRESS": node.address}
    )
    assert result.exit_code == 0 and json.loads(result.stdout)["version"] == 1


def test_admin_commands(node: FakeNode) -> None:
    code, out, err = invoke(node, "status")
    assert code == 0 and "leader" in out and "cannot survive" in err
    code, out, _ = invoke(node, "status", "--json")
    data = json.loads(out)
    assert code == 0 and data["nodes"][0]["status"]["raft_state"] == "leader"
    assert any("cannot survive" in w for w in data["warnings"])
    code, out, _ = invoke(node, "nodes", "list", "--json")
    assert code == 0 and json.loads(out)[0]["client_address"] == node.address
    code, out, _ = invoke(node, "nodes", "list")
    assert code == 0 and "CLIENT" in out
    code, out, err = invoke(node, "metadata-server", "list-servers")
    assert code == 0 and "voter" in out and "cannot survive" in err
    code, out, _ = invoke(node, "metadata-server", "add-node", "2")
    assert code == 0
    code, out, _ = invoke(node, "metadata-server", "remove-node", "2", "--json")
    assert code == 0 and json.loads(out)["removed"] is True
    code, _, _ = invoke(node, "metadata-server", "remove-node", "0")
    assert code == 2
    code, out, _ = invoke(node, "provision")
    assert code == 0 and "done" in out
    node.hook = lambda req: m.ErrorReply(req.id, m.ErrorCode.REFUSED, "would lose quorum")
    code, _, err = invoke(node, "metadata-server", "remove-node", "1")
    assert code == 1 and "would lose quorum" in err


def test_watch_prints_events(node: FakeNode) -> None:
    for key in ("/w/a", "/w/b", "/x"):
        invoke(node, "metadata", "put", key, "v")
    args = ["metadata", "watch", "/w/", "--prefix", "--from-version", "1", "--count", "1"]
    code, out, _ = invoke(node, *args)
    assert code == 0 and out.strip() == "2 put /w/b v"
    code, out, _ = invoke(
        node, "metadata", "watch", "/", "--prefix", "--from-version", "1", "--count", "2", "--json"
    )
    events = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [(e["key"], e["version"]) for e in events] == [("/w/b", 2), ("/x", 3)]
