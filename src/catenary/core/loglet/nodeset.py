"""Nodeset selection: which log-servers may hold a new replicated loglet's records.

Rules:

1. Deterministic: the same servers, property, previous nodeset and salt give the
   same nodeset on every node (the choice is then settled by the chain's
   compare-and-set, but two racing nodes usually agree anyway).
2. Only ``read-write`` log-servers are chosen (provisioning, read-only, gone,
   data-loss and disabled servers take no new loglets).
3. Size ``max(target, 2r - 1)`` when that many servers exist (so a write quorum
   survives ``r - 1`` failed servers), else every eligible server; never fewer
   than a write quorum.
4. Spread: each pick goes to the region, then the zone, with the fewest picks so
   far, so zone- and region-aware replication find their domains.
5. Stability: among equally spread choices, members of the previous segment's
   nodeset come first (their data and connections are warm); then the others in
   an order rotated by ``salt`` (e.g. the log id), so logs spread their load.
6. No valid nodeset (too few servers or domains) is ``NodesetUnavailable``, a
   retryable error naming what is missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec

from catenary.core.loglet.replication import (
    NodeId,
    NodeSetChecker,
    ReplicationProperty,
    split_location,
)

# Storage states of a log-server (product: provisioning -> read-write -> ...).
PROVISIONING = "provisioning"
READ_WRITE = "read-write"
READ_ONLY = "read-only"
GONE = "gone"
DATA_LOSS = "data-loss"
DISABLED = "disabled"
STORAGE_STATES = (PROVISIONING, READ_WRITE, READ_ONLY, GONE, DATA_LOSS, DISABLED)


class LogServerInfo(msgspec.Struct, array_like=True, frozen=True):
    location: str = ""  # "region.zone"
    state: str = READ_WRITE


class NodesetUnavailable(Exception):
    """No nodeset satisfies the replication now; retry once servers join or recover."""

    retryable = True


def select_nodeset(
    servers: Mapping[NodeId, LogServerInfo],
    replication: ReplicationProperty,
    *,
    target_size: int = 0,
    previous: Sequence[NodeId] = (),
    salt: int = 0,
) -> tuple[NodeId, ...]:
    """Choose a nodeset (rules 1-6); returned sorted."""
    eligible = sorted(node for node, info in servers.items() if info.state == READ_WRITE)
    if len(eligible) < replication.node:
        raise NodesetUnavailable(
            f"{len(eligible)} read-write log-servers, replication {replication} "
            f"needs {replication.node}"
        )
    size = min(len(eligible), max(target_size, 2 * replication.node - 1))
    previous_rank = {node: rank for rank, node in enumerate(previous)}
    shift = salt % len(eligible)
    rotated = eligible[shift:] + eligible[:shift]
    position = {node: i for i, node in enumerate(rotated)}
    region_picks: dict[str, int] = {}
    zone_picks: dict[str, int] = {}
    chosen: list[NodeId] = []
    remaining = set(eligible)
    while len(chosen) < size:

        def key(node: NodeId) -> tuple[int, int, int, int]:
            region, zone = split_location(servers[node].location)
            return (
                region_picks.get(region, 0),
                zone_picks.get(zone, 0),
                previous_rank.get(node, len(previous)),
                position[node],
            )

        pick = min(sorted(remaining), key=key)
        remaining.discard(pick)
        chosen.append(pick)
        region, zone = split_location(servers[pick].location)
        region_picks[region] = region_picks.get(region, 0) + 1
        zone_picks[zone] = zone_picks.get(zone, 0) + 1
    nodeset = tuple(sorted(chosen))
    checker = NodeSetChecker(nodeset, replication, {n: servers[n].location for n in nodeset})
    if not checker.admits():
        raise NodesetUnavailable(checker.why_not())
    return nodeset
