"""The node's services: picked once by the mode, served through one interface."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from catenary.api import messages as api
from catenary.api.messages import ErrorCode
from catenary.runtime.client_port import ServiceError
from catenary.runtime.metrics import ServerMetrics
from catenary.server.config import load_config
from catenary.server.context import NodeContext
from catenary.server.logs import LogService
from catenary.server.membership import ClusterMembership, LocalMembership
from catenary.server.metadata import LocalMetadata, ReplicatedMetadata
from catenary.server.node import Server, make_services
from catenary.server.requests import RequestRouter

SERVER_SRC = Path(__file__).resolve().parents[2] / "src" / "catenary" / "server"

pytestmark = pytest.mark.timeout(30)


def _metrics() -> ServerMetrics:
    return ServerMetrics(lambda: None)  # type: ignore[arg-type, return-value]


def test_the_mode_picks_the_services_once() -> None:
    local = make_services(
        NodeContext(load_config(env={}, flags={"metadata.server": "local"})), _metrics()
    )
    assert isinstance(local.metadata, LocalMetadata)
    assert isinstance(local.membership, LocalMembership)
    replicated = make_services(NodeContext(load_config(env={})), _metrics())
    assert isinstance(replicated.metadata, ReplicatedMetadata)
    assert isinstance(replicated.membership, ClusterMembership)
    # Every node is a log-server by default; without the role it runs no log service.
    assert isinstance(local.log, LogService) and isinstance(replicated.log, LogService)
    bare = make_services(
        NodeContext(load_config(env={}, flags={"roles": ["metadata-server", "admin"]})),
        _metrics(),
    )
    assert bare.log is None


def test_no_branch_on_the_mode_outside_the_factory() -> None:
    pattern = re.compile(r"local is not None|metadata\.server ==|== \"local\"")
    hits = [
        f"{path.name}:{number}"
        for path in sorted(SERVER_SRC.glob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == [hit for hit in hits if hit.startswith(("node.py", "config.py"))], hits
    assert sum(hit.startswith("node.py") for hit in hits) == 1, hits


@pytest.mark.parametrize("mode", ["replicated", "local"])
def test_before_start_requests_answer_the_phase(mode: str) -> None:
    server = Server(load_config(env={}, flags={"metadata.server": mode}))
    router = server.router
    assert isinstance(router, RequestRouter)
    assert not server.status().provisioned

    async def get() -> None:
        await router.handle(api.Get(1, "k", False))

    with pytest.raises(ServiceError) as caught:
        asyncio.run(get())
    assert caught.value.code == ErrorCode.UNAVAILABLE
    assert caught.value.message == "the node is starting"
