"""Replication property, write quorums and f-majorities of a replicated loglet.

Theory of operation
-------------------
A replicated loglet stores each record on a **write quorum** of the log-servers
of its **nodeset**.  The **replication property** says what a write quorum is:

- ``{node: r}``: any ``r`` distinct nodes;
- ``{zone: z, node: r}``: ``r`` distinct nodes spanning at least ``z`` zones;
- ``{region: g, node: r}``: ``r`` distinct nodes spanning at least ``g`` regions;
- ``{region: g, zone: z, node: r}``: both of the above at once.

Every node has a **location** ``"region.zone"`` (``""`` or a missing part is a
domain of its own: the empty region, the empty zone within its region).  Zones
are named within their region, so ``"eu.a"`` and ``"us.a"`` are two zones.

Rules (each one is what the sequencer, seal and find-tail rely on):

1. Write quorums are *monotone*: a superset (within the nodeset) of a write
   quorum is a write quorum.  So a set ``S`` meets every write quorum exactly
   when the nodes outside it (``nodeset - S``) do not form one.  That set is an
   **f-majority**: the smallest sets that can prove "no write quorum can still
   be formed without me" — a seal acknowledged by an f-majority stops every
   later append, and the highest local tail of an f-majority bounds every
   record that was ever acknowledged.  With ``{node: r}`` over ``n`` nodes an
   f-majority has ``n - r + 1`` nodes.
2. A nodeset *admits* the property when the whole nodeset is a write quorum;
   a loglet is never created on a nodeset that does not.
3. Checks are pure functions of (nodeset, locations, property, set): the same
   inputs give the same answer on every node, in every run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

NodeId = int


class ReplicationError(ValueError):
    """A replication property or a nodeset that cannot work; the message says why."""


class ReplicationProperty(msgspec.Struct, array_like=True, frozen=True):
    """How many copies make a record committed, and across how many domains."""

    node: int
    zone: int = 0  # distinct zones a write quorum spans (0: no constraint)
    region: int = 0  # distinct regions a write quorum spans (0: no constraint)

    def __post_init__(self) -> None:
        if self.node < 1:
            raise ReplicationError(f"replication needs node >= 1, got {self.node}")
        for scope, count in (("zone", self.zone), ("region", self.region)):
            if count < 0:
                raise ReplicationError(f"replication {scope} must be >= 0, got {count}")
            if count > self.node:
                raise ReplicationError(
                    f"replication {scope}: {count} exceeds node: {self.node} "
                    "(each domain needs a copy)"
                )

    @classmethod
    def parse(cls, text: str) -> ReplicationProperty:
        """``"2"``, ``"{node: 2}"``, ``"{zone: 2, node: 3}"``, ``"region:2,node:3"``."""
        body = text.strip().removeprefix("{").removesuffix("}").strip()
        if body.isdigit():
            return cls(node=int(body))
        counts: dict[str, int] = {}
        for part in body.split(","):
            name, sep, value = part.partition(":")
            name, value = name.strip(), value.strip()
            if not sep or name not in ("node", "zone", "region") or not value.isdigit():
                raise ReplicationError(
                    f"bad replication {text!r}: expected e.g. '{{node: 2}}' or "
                    "'{zone: 2, node: 3}'"
                )
            if name in counts:
                raise ReplicationError(f"bad replication {text!r}: {name} given twice")
            counts[name] = int(value)
        if "node" not in counts:
            raise ReplicationError(f"bad replication {text!r}: the node count is required")
        return cls(node=counts["node"], zone=counts.get("zone", 0), region=counts.get("region", 0))

    def __str__(self) -> str:
        parts = []
        if self.region:
            parts.append(f"region: {self.region}")
        if self.zone:
            parts.append(f"zone: {self.zone}")
        parts.append(f"node: {self.node}")
        return "{" + ", ".join(parts) + "}"


def split_location(location: str) -> tuple[str, str]:
    """``"eu.a"`` -> (``"eu"``, ``"eu.a"``): the region and the zone's full name."""
    region, _, zone = location.partition(".")
    return region, f"{region}.{zone}"


class NodeSetChecker:
    """Write-quorum and f-majority tests over one nodeset (rules 1-3)."""

    __slots__ = ("_nodeset", "_prop", "_region", "_zone")

    def __init__(
        self,
        nodeset: Iterable[NodeId],
        replication: ReplicationProperty,
        locations: Mapping[NodeId, str] | None = None,
    ) -> None:
        self._nodeset = frozenset(nodeset)
        self._prop = replication
        where = locations or {}
        self._region: dict[NodeId, str] = {}
        self._zone: dict[NodeId, str] = {}
        for node in self._nodeset:
            region, zone = split_location(where.get(node, ""))
            self._region[node] = region
            self._zone[node] = zone

    @property
    def nodeset(self) -> frozenset[NodeId]:
        return self._nodeset

    @property
    def replication(self) -> ReplicationProperty:
        return self._prop

    def is_write_quorum(self, nodes: Iterable[NodeId]) -> bool:
        """Do ``nodes`` (restricted to the nodeset) hold enough copies across domains?"""
        members = self._nodeset.intersection(nodes)
        prop = self._prop
        if len(members) < prop.node:
            return False
        if prop.zone and len({self._zone[n] for n in members}) < prop.zone:
            return False
        return not (prop.region and len({self._region[n] for n in members}) < prop.region)

    def is_f_majority(self, nodes: Iterable[NodeId]) -> bool:
        """Does ``nodes`` meet every write quorum (rule 1: the rest form none)?"""
        return not self.is_write_quorum(self._nodeset.difference(nodes))

    def admits(self) -> bool:
        """Can a write quorum be formed at all (rule 2)?"""
        return self.is_write_quorum(self._nodeset)

    def why_not(self) -> str:
        """Why the nodeset does not admit the property ("" when it does)."""
        prop = self._prop
        if len(self._nodeset) < prop.node:
            return f"{len(self._nodeset)} log-servers, replication {prop} needs {prop.node}"
        zones = len(set(self._zone.values()))
        if prop.zone and zones < prop.zone:
            return f"{zones} zones among the log-servers, replication {prop} needs {prop.zone}"
        regions = len(set(self._region.values()))
        if prop.region and regions < prop.region:
            return (
                f"{regions} regions among the log-servers, replication {prop} needs {prop.region}"
            )
        return ""
