"""Configuration of one ``catenary server``: one TOML file, environment, flags.

Theory of operation
-------------------
1. Every option has a default; with no file, no environment and no flags the
   node runs a replicated metadata server as a Raft group of one and
   provisions itself (unless ``production``).
2. Sources, lowest precedence first: defaults, the TOML file (``--config``),
   ``CATENARY_…`` environment variables, command-line flags.  A top-level option
   ``data_dir`` is ``CATENARY_DATA_DIR``; an option in a section, e.g.
   ``[raft] tick_ms``, is ``CATENARY_RAFT_TICK_MS``.  The generic flag
   ``--set raft.tick_ms=20`` reaches every option.
3. Text values (environment, ``--set``) are parsed by the option's type:
   integers (``1_000`` allowed), booleans (true/false/1/0/yes/no/on/off) and
   lists (comma-separated).
4. Validation collects every problem before giving up: one line per bad value,
   naming the option, the value, what is expected and where the value came
   from.  The caller exits with code 2.  Unknown options are errors (a typo
   must not be silently ignored).
"""

from __future__ import annotations

import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from typing import Any

import msgspec

from catenary.core.loglet.replication import ReplicationError, ReplicationProperty
from catenary.core.metadata.lessor import LessorConfig
from catenary.core.metadata.replica import ReplicaConfig
from catenary.core.metadata.state import MetadataConfig
from catenary.core.raft.types import RaftConfig
from catenary.runtime.client_port import ClientPortConfig
from catenary.runtime.host import HostConfig
from catenary.runtime.local_host import LocalHostConfig
from catenary.runtime.transport import TransportConfig
from catenary.storage.store import StoreConfig
from catenary.wire.address import AddressError, parse_address

ROLES = ("metadata-server", "log-server", "sequencer", "admin")
METADATA_SERVERS = ("replicated", "local")
LOG_LEVELS = ("debug", "info", "warning", "error")
EVENT_LOOPS = ("uvloop", "asyncio")
ENV_PREFIX = "CATENARY_"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` has one line per bad value."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class MetadataSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    server: str = "replicated"  # "replicated" (Raft) | "local" (one node, no Raft)
    key_bytes_max: int = 4096
    value_bytes_max: int = 1 << 20
    request_timeout_ms: int = 10_000  # a client op not finished by then: UNAVAILABLE/INDETERMINATE
    queue_max: int = 20_000  # inputs waiting for the host task (client ops, peer messages)
    batch_max: int = 4096  # inputs drained into one Ready (one fsync)
    # Persistence jobs (Readies) in flight at once (HostLoop rule 3).  1: batch
    # N+1 is proposed once N is durable; commits and reads still flow during the
    # fsync.  2: N+1 is proposed, sent and queued while N fsyncs -- measured
    # slower on a disk shared by the three nodes (docs/benchmarks.md) until the
    # writer merges queued saves into one fsync.
    persists_in_flight_max: int = 1
    # Jobs queued behind a running one that the writer thread writes as one
    # group with one fdatasync (HostLoop rule 9); 1: one fdatasync per job.
    persist_group_max: int = 16
    list_limit_max: int = 10_000  # keys in one List reply
    watch_batch_max: int = 1000  # events in one WatchReply
    watch_history_max: int = 10_000  # events kept for watchers that resume
    watches_per_connection_max: int = 1000
    lease_checkpoint_interval_ms: int = 5000
    local_snapshot_every_writes: int = 10_000  # local mode: snapshot + log truncation period

    def state_options(self) -> MetadataConfig:
        """The metadata state machine's bounds (both modes)."""
        return MetadataConfig(
            key_bytes_max=self.key_bytes_max,
            value_bytes_max=self.value_bytes_max,
            watch_history_max=self.watch_history_max,
        )

    def replica_options(self, raft: RaftSection) -> ReplicaConfig:
        """The replicated mode's core: leases here, pending bounds in ``[raft]``."""
        return ReplicaConfig(
            lessor=LessorConfig(checkpoint_interval_ms=self.lease_checkpoint_interval_ms),
            max_pending_writes=raft.pending_proposals_max,
            max_pending_reads=raft.pending_reads_max,
        )

    def host_options(self, raft: RaftSection) -> HostConfig:
        """The replicated mode's host task."""
        return HostConfig(
            tick_ms=raft.tick_ms,
            queue_max=self.queue_max,
            batch_max=self.batch_max,
            request_timeout_ms=self.request_timeout_ms,
            persists_in_flight_max=self.persists_in_flight_max,
            persist_group_max=self.persist_group_max,
        )

    def local_host_options(self, raft: RaftSection, storage: StorageSection) -> LocalHostConfig:
        """The local mode's host task and its store (the tick drives lease expiry)."""
        return LocalHostConfig(
            key_bytes_max=self.key_bytes_max,
            value_bytes_max=self.value_bytes_max,
            watch_history_max=self.watch_history_max,
            snapshot_every_writes=self.local_snapshot_every_writes,
            segment_bytes_max=storage.segment_bytes_max,
            index_checkpoint_records=storage.index_checkpoint_records,
            record_bytes_max=storage.record_bytes_max,
            lease_checkpoint_interval_ms=self.lease_checkpoint_interval_ms,
            tick_ms=raft.tick_ms,
            queue_max=self.queue_max,
            # One local Ready is one store append; a smaller batch keeps its latency even.
            batch_max=min(self.batch_max, 1024),
            request_timeout_ms=self.request_timeout_ms,
        )


class RaftSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    tick_ms: int = 50
    election_timeout_ticks: int = 10
    heartbeat_interval_ticks: int = 2
    entries_per_message_max: int = 512
    message_bytes_max: int = 1 << 20
    inflight_messages_max: int = 64
    snapshot_chunk_bytes: int = 256 << 10
    compact_after_entries: int = 10_000
    compact_after_bytes: int = 64 << 20
    pre_vote: bool = True
    check_quorum: bool = True
    lease_reads: bool = False
    lease_drift_ticks: int = 2
    pending_proposals_max: int = 10_000
    pending_reads_max: int = 10_000
    read_rounds_in_flight_max: int = 4
    eager_commit_broadcast: bool = False
    # A learner is promoted to voter once its match index is within this many
    # entries of the leader's last index.
    promote_lag_entries_max: int = 64

    def options(self) -> RaftConfig:
        """The Raft core's bounds (``RAFT_CORE_NAMES``: option -> core field)."""
        return RaftConfig(
            **{core: getattr(self, option) for option, core in RAFT_CORE_NAMES.items()}
        )


# Each RaftConfig field and the [raft] option that sets it.  The core keeps its
# own (older) names; the configuration follows the ``<what>_<unit>_max`` rule.
RAFT_CORE_NAMES: dict[str, str] = {
    "election_timeout_ticks": "election_timeout_ticks",
    "heartbeat_interval_ticks": "heartbeat_interval_ticks",
    "entries_per_message_max": "max_entries_per_message",
    "message_bytes_max": "max_bytes_per_message",
    "inflight_messages_max": "max_inflight_messages",
    "snapshot_chunk_bytes": "snapshot_chunk_bytes",
    "compact_after_entries": "compact_after_entries",
    "compact_after_bytes": "compact_after_bytes",
    "pre_vote": "pre_vote",
    "check_quorum": "check_quorum",
    "lease_reads": "lease_reads",
    "lease_drift_ticks": "lease_drift_ticks",
    "pending_proposals_max": "max_pending_proposals",
    "pending_reads_max": "max_pending_reads",
    "read_rounds_in_flight_max": "max_read_rounds_in_flight",
    "eager_commit_broadcast": "eager_commit_broadcast",
}


class NetworkSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    event_loop: str = "uvloop"  # "uvloop" (when installed) | "asyncio"
    frame_bytes_max: int = 16 << 20
    handshake_timeout_ms: int = 5000
    client_connections_max: int = 1024
    client_inflight_per_connection_max: int = 1024
    peer_send_queue_max: int = 4096  # messages queued per peer before the oldest are dropped
    # A message queued to a peer this long is dropped, not sent: a peer back from a cut is
    # sent what is current, not a backlog of stale heartbeats.
    peer_send_queue_age_ms_max: int = 2000
    reconnect_backoff_ms_min: int = 50
    # A cut peer is redialled at least every peer_connect_timeout_ms + reconnect_backoff_ms_max,
    # one SYN per attempt (below the kernel's first SYN retransmission at 1 s): a healed link
    # is back within about a second however long the cut lasted.
    reconnect_backoff_ms_max: int = 250
    peer_connect_timeout_ms: int = 300  # give up a peer dial not connected by then, and redial
    peer_ping_interval_ms: int = 500  # ping a peer heard from for this long
    peer_idle_timeout_ms: int = 2000  # drop and redial a peer link silent this long
    client_ping_interval_ms: int = 1000  # ping a client heard from for this long
    client_idle_timeout_ms: int = 5000  # drop a client connection silent this long
    # At most one "peer link lost"/"restored" line per peer this often (the rest are counted).
    peer_link_log_interval_ms: int = 10_000
    client_request_idle_ms: int = 60_000  # close a client connection with no request this long

    def transport_options(self) -> TransportConfig:
        """The peer transport's bounds."""
        return TransportConfig(
            frame_bytes_max=self.frame_bytes_max,
            handshake_timeout_ms=self.handshake_timeout_ms,
            connect_timeout_ms=self.peer_connect_timeout_ms,
            reconnect_backoff_min_ms=self.reconnect_backoff_ms_min,
            reconnect_backoff_max_ms=self.reconnect_backoff_ms_max,
            send_queue_messages_max=self.peer_send_queue_max,
            send_queue_age_max_ms=self.peer_send_queue_age_ms_max,
            ping_interval_ms=self.peer_ping_interval_ms,
            idle_timeout_ms=self.peer_idle_timeout_ms,
            link_log_interval_ms=self.peer_link_log_interval_ms,
        )

    def client_port_options(self, metadata: MetadataSection) -> ClientPortConfig:
        """The client port's bounds (watches per connection are a metadata option)."""
        return ClientPortConfig(
            frame_bytes_max=self.frame_bytes_max,
            handshake_timeout_ms=self.handshake_timeout_ms,
            connections_max=self.client_connections_max,
            inflight_max=self.client_inflight_per_connection_max,
            watches_max=metadata.watches_per_connection_max,
            ping_interval_ms=self.client_ping_interval_ms,
            idle_timeout_ms=self.client_idle_timeout_ms,
            request_idle_ms=self.client_request_idle_ms,
        )


class StorageSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    segment_bytes_max: int = 64 << 20
    index_checkpoint_records: int = 100_000
    record_bytes_max: int = 32 << 20
    disk_full_retry_ms: int = 1000  # on a full disk, retry the failed save this often

    def options(self) -> StoreConfig:
        """The storage engine's bounds (every store of the node)."""
        return StoreConfig(
            segment_bytes_max=self.segment_bytes_max,
            index_checkpoint_records=self.index_checkpoint_records,
            record_bytes_max=self.record_bytes_max,
        )


class LogsSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    count: int = 4  # logs 0 .. count-1 are created when the cluster is provisioned
    provider: str = "replicated"  # replicated | local: the provider of new segments
    replication: str = ""  # e.g. "{node: 2}"; "" = {node: min(2, voters)}
    nodeset_size: int = 0  # 0 = the smallest nodeset the replication allows
    tick_ms: int = 10
    append_timeout_ms: int = 5000  # an append not acknowledged by then is indeterminate
    sealed_wait_ms: int = 1000  # an append that met a seal waits this long for a new segment
    record_bytes_max: int = 1 << 20
    batch_records_max: int = 65_536  # records in one append request
    records_inflight_max: int = 65_536  # per segment, unacknowledged
    store_timeout_ms: int = 200  # a store wave unanswered this long is sent elsewhere
    sequencer_queue_max: int = 4096  # appends waiting for room in a sequencer
    forwarded_max: int = 4096  # appends waiting for another node's sequencer
    inbox_max: int = 16_384  # log-server inputs waiting
    store_batch_max: int = 1024  # log-server inputs per persistence job
    checkpoint_writes: int = 100_000  # log-store index checkpoints
    read_buffer_max: int = 4096  # items a read stream buffers
    read_bytes_max: int = 1 << 20  # per GetRecords answer
    read_reply_bytes_max: int = 1 << 20  # per LogRead reply
    read_wait_ms: int = 1000  # a WaitForTail unanswered this long is sent elsewhere
    read_resend_ms: int = 200  # a read unanswered this long is sent elsewhere
    read_sessions_max: int = 256  # read streams kept between reads
    read_session_idle_ms: int = 30_000
    tail_query_timeout_ms: int = 1000
    reconfigure_timeout_ms: int = 10_000
    controller_interval_ms: int = 1000
    # The metadata leader moves a log whose sequencer's node it has had no link to this long
    # (0: never; then ``catenary logs reconfigure`` does it).
    sequencer_failover_ms: int = 3000


class JoinSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    retry_interval_ms: int = 500
    request_timeout_ms: int = 5000
    timeout_ms: int = 0  # give up joining after this long; 0 = keep trying


class ShutdownSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    transfer_timeout_ms: int = 3000  # leadership transfer before stopping
    drain_timeout_ms: int = 2000  # in-flight client requests before stopping


class ProcessSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # Allocations between young-generation garbage collections.  The default
    # of the interpreter (700) makes a busy node spend a tenth of its time
    # scanning; objects alive at start are frozen out of collection too.
    gc_gen0_threshold: int = 50_000


class ServerConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    cluster_name: str = "catenary"
    node_name: str = ""  # free text shown in status; "" = "n<id>"
    data_dir: str = "catenary-data"
    peer_address: str = "127.0.0.1:5122"
    client_address: str = "127.0.0.1:5123"
    admin_address: str = "127.0.0.1:5124"  # HTTP admin; "" disables it
    seeds: list[str] = msgspec.field(default_factory=list)  # client addresses of members
    roles: list[str] = msgspec.field(default_factory=lambda: list(ROLES))
    production: bool = False
    auto_provision: bool | None = None  # None: on unless production
    log_level: str = "info"
    metadata: MetadataSection = msgspec.field(default_factory=MetadataSection)
    raft: RaftSection = msgspec.field(default_factory=RaftSection)
    network: NetworkSection = msgspec.field(default_factory=NetworkSection)
    storage: StorageSection = msgspec.field(default_factory=StorageSection)
    join: JoinSection = msgspec.field(default_factory=JoinSection)
    shutdown: ShutdownSection = msgspec.field(default_factory=ShutdownSection)
    process: ProcessSection = msgspec.field(default_factory=ProcessSection)
    logs: LogsSection = msgspec.field(default_factory=LogsSection)

    @property
    def provision_automatically(self) -> bool:
        if self.auto_provision is not None:
            return self.auto_provision
        return not self.production


_SECTIONS: dict[str, type[msgspec.Struct]] = {
    "metadata": MetadataSection,
    "raft": RaftSection,
    "network": NetworkSection,
    "storage": StorageSection,
    "join": JoinSection,
    "shutdown": ShutdownSection,
    "process": ProcessSection,
    "logs": LogsSection,
}

# Options renamed to the ``<what>_<unit>_max`` rule: the old spelling is still
# read (file, environment, ``--set``) and means the new option.
RENAMED: dict[str, str] = {
    "raft.max_entries_per_message": "raft.entries_per_message_max",
    "raft.max_bytes_per_message": "raft.message_bytes_max",
    "raft.max_inflight_messages": "raft.inflight_messages_max",
    "raft.max_pending_proposals": "raft.pending_proposals_max",
    "raft.max_pending_reads": "raft.pending_reads_max",
    "raft.max_read_rounds_in_flight": "raft.read_rounds_in_flight_max",
    "network.reconnect_backoff_min_ms": "network.reconnect_backoff_ms_min",
    "network.reconnect_backoff_max_ms": "network.reconnect_backoff_ms_max",
}


def _field_types(cls: type[msgspec.Struct]) -> dict[str, Any]:
    return {f.name: f.type for f in msgspec.structs.fields(cls)}


def option_types() -> dict[str, Any]:
    """Every option's dotted path (``raft.tick_ms``) and its type, in declaration order."""
    out: dict[str, Any] = {}
    for name, typ in _field_types(ServerConfig).items():
        if name in _SECTIONS:
            for sub, subtyp in _field_types(_SECTIONS[name]).items():
                out[f"{name}.{sub}"] = subtyp
        else:
            out[name] = typ
    return out


def env_name(path: str) -> str:
    return ENV_PREFIX + path.replace(".", "_").upper()


def env_names() -> dict[str, str]:
    """CATENARY_… variable -> option path."""
    return {env_name(path): path for path in option_types()}


def _type_name(typ: Any) -> str:
    if typ is int:
        return "an integer"
    if typ is bool:
        return "a boolean (true/false)"
    if typ is str:
        return "a string"
    if typing.get_origin(typ) is list:
        return "a list of strings"
    if isinstance(typ, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(typ) if a is not type(None))
    return str(typ)


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_text(text: str, typ: Any) -> Any:
    """Parse a text value (environment, ``--set``) for an option of type ``typ``.

    Raises ValueError with a short reason.
    """
    if isinstance(typ, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if text.strip().lower() in ("", "none", "auto"):
            return None
        assert len(args) == 1
        return parse_text(text, args[0])
    if typ is bool:
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError("expected a boolean (true/false)")
    if typ is int:
        try:
            return int(text.strip(), 10)
        except ValueError:
            raise ValueError("expected an integer") from None
    if typing.get_origin(typ) is list:
        return [part.strip() for part in text.split(",") if part.strip()]
    return text


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _convert(path: str, value: Any, typ: Any, source: str, problems: list[str]) -> Any:
    try:
        return msgspec.convert(value, typ, strict=True)
    except msgspec.ValidationError:
        problems.append(f"{path}: expected {_type_name(typ)}, got {_describe(value)} ({source})")
        return _MISSING


_MISSING = object()


def load_config(
    path: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    flag_texts: Mapping[str, str] | None = None,
) -> ServerConfig:
    """Merge defaults, file, environment and flags; validate; raise ConfigError.

    ``flags`` are typed values keyed by option path (from click options);
    ``flag_texts`` are ``--set path=value`` texts, parsed like environment values.
    """
    problems: list[str] = []
    types_by_path = option_types()
    values: dict[str, tuple[Any, str]] = {}  # path -> (typed value, source)

    if path is not None:
        _read_file(path, types_by_path, values, problems)

    env = os.environ if env is None else env
    by_env = env_names()
    by_env.update({env_name(old): new for old, new in RENAMED.items()})
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX):
            continue
        option = by_env.get(name)
        if option is None:
            # Variables of other tools (e.g. the client's CATENARY_ADDRESS) share the
            # prefix, so an unknown name is not an error here.
            continue
        _set_text(option, env[name], f"environment {name}", types_by_path, values, problems)

    for written, text in (flag_texts or {}).items():
        option = RENAMED.get(written, written)
        if option not in types_by_path:
            problems.append(f"{option}: unknown option (flag --set)")
            continue
        _set_text(option, text, "flag --set", types_by_path, values, problems)

    for option, value in (flags or {}).items():
        assert option in types_by_path, option
        converted = _convert(option, value, types_by_path[option], "flag", problems)
        if converted is not _MISSING:
            values[option] = (converted, "flag")

    # Values of the wrong type were left out, so the semantic checks below still
    # report every other bad value in the same run.
    tree: dict[str, Any] = {}
    for option, (value, _source) in values.items():
        section, _, key = option.rpartition(".")
        (tree.setdefault(section, {}) if section else tree)[key] = value
    config = msgspec.convert(tree, ServerConfig)
    sources = {option: source for option, (_value, source) in values.items()}
    problems += validate(config, sources)
    if problems:
        raise ConfigError(problems)
    return config


def _read_file(
    path: str,
    types_by_path: dict[str, Any],
    values: dict[str, tuple[Any, str]],
    problems: list[str],
) -> None:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        problems.append(f"config file {path}: cannot read: {exc.strerror or exc}")
        return
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"config file {path}: not valid TOML: {exc}")
        return
    source = f"file {path}"
    for key in data:
        value = data[key]
        if key in _SECTIONS:
            if not isinstance(value, dict):
                problems.append(
                    f"{key}: expected a table [{key}], got {_describe(value)} ({source})"
                )
                continue
            for sub in value:
                option = RENAMED.get(f"{key}.{sub}", f"{key}.{sub}")
                if option not in types_by_path:
                    problems.append(f"{option}: unknown option ({source})")
                    continue
                converted = _convert(option, value[sub], types_by_path[option], source, problems)
                if converted is not _MISSING:
                    values[option] = (converted, source)
        elif key in types_by_path:
            converted = _convert(key, value, types_by_path[key], source, problems)
            if converted is not _MISSING:
                values[key] = (converted, source)
        else:
            problems.append(f"{key}: unknown option ({source})")


def _set_text(
    option: str,
    text: str,
    source: str,
    types_by_path: dict[str, Any],
    values: dict[str, tuple[Any, str]],
    problems: list[str],
) -> None:
    typ = types_by_path[option]
    try:
        parsed = parse_text(text, typ)
    except ValueError as exc:
        problems.append(f"{option}: {exc}, got {_describe(text)} ({source})")
        return
    values[option] = (parsed, source)


def validate(config: ServerConfig, sources: Mapping[str, str] | None = None) -> list[str]:
    """Semantic checks, each once: one line per bad value, naming the option at fault.

    A check that relates two options (``batch_max <= queue_max``) blames the one
    that was set (file, environment, flag) rather than one left at its
    default; when both or neither were set, the first named.  A value already
    reported is not reported again by a later check.
    """
    sources = sources or {}
    problems: list[str] = []
    reported: set[tuple[str, str]] = set()

    def bad(option: str, value: Any, why: str) -> None:
        if (option, repr(value)) in reported:
            return
        reported.add((option, repr(value)))
        where = sources.get(option, "default")
        problems.append(f"{option}: {why}, got {_describe(value)} ({where})")

    def at_fault(*options: str) -> str:
        """The first of ``options`` that was set, else the first."""
        return next((option for option in options if option in sources), options[0])

    def value_of(option: str) -> Any:
        section, _, name = option.rpartition(".")
        return getattr(getattr(config, section) if section else config, name)

    def at_most(low: str, high: str, *, strict: bool = False) -> None:
        """``low <= high`` (``<`` when strict), blaming the one that was set."""
        low_value, high_value = value_of(low), value_of(high)
        if low_value < high_value or (not strict and low_value == high_value):
            return
        broken(low, high, strict=strict)

    def broken(low: str, high: str, *, strict: bool) -> None:
        """Report a broken ``low <= high`` (``<``) on the option that was set."""
        low_value, high_value = value_of(low), value_of(high)
        if at_fault(low, high) == low:
            relation = "must be below" if strict else "must not exceed"
            bad(low, low_value, f"{relation} {high} ({high_value})")
        else:
            relation = "must exceed" if strict else "must be at least"
            bad(high, high_value, f"{relation} {low} ({low_value})")

    if not _NAME_RE.match(config.cluster_name):
        bad(
            "cluster_name",
            config.cluster_name,
            "must be 1-64 characters of letters, digits, '.', '_' or '-'",
        )
    if len(config.node_name) > 64:
        bad("node_name", config.node_name, "must be at most 64 characters")
    if not config.data_dir:
        bad("data_dir", config.data_dir, "must not be empty")
    for option in ("peer_address", "client_address"):
        value = getattr(config, option)
        try:
            parse_address(value)
        except AddressError as exc:
            bad(option, value, exc.reason)
    if config.admin_address:
        try:
            parse_address(config.admin_address)
        except AddressError as exc:
            bad("admin_address", config.admin_address, f"{exc.reason} (or empty to disable)")
    listen = [config.peer_address, config.client_address]
    if config.admin_address:
        listen.append(config.admin_address)
    if len(set(listen)) != len(listen):
        bad("client_address", config.client_address, "peer, client and admin addresses must differ")
    for seed in config.seeds:
        try:
            parse_address(seed)
        except AddressError as exc:
            bad("seeds", seed, f"each seed: {exc.reason}")
    if not config.roles:
        bad("roles", config.roles, f"must name at least one of {', '.join(ROLES)}")
    for role in config.roles:
        if role not in ROLES:
            bad("roles", role, f"unknown role; expected one of {', '.join(ROLES)}")
    if len(set(config.roles)) != len(config.roles):
        bad("roles", config.roles, "roles must not repeat")
    if "metadata-server" not in config.roles:
        bad("roles", config.roles, "this version needs the metadata-server role on every node")
    if config.network.event_loop not in EVENT_LOOPS:
        bad(
            "network.event_loop",
            config.network.event_loop,
            f"expected one of {', '.join(EVENT_LOOPS)}",
        )
    if config.log_level not in LOG_LEVELS:
        bad("log_level", config.log_level, f"expected one of {', '.join(LOG_LEVELS)}")

    md = config.metadata
    if md.server not in METADATA_SERVERS:
        bad("metadata.server", md.server, 'expected "replicated" or "local"')
    elif md.server == "local" and config.seeds:
        bad("seeds", config.seeds, 'a node with metadata.server = "local" cannot join a cluster')

    # Ranges of single integers: at least 1 unless listed in _INT_RANGES.
    for section_name, section_type in _SECTIONS.items():
        section = getattr(config, section_name)
        for field in msgspec.structs.fields(section_type):
            if field.type is not int:
                continue
            option = f"{section_name}.{field.name}"
            low, high = _INT_RANGES.get(option, (1, None))
            value = getattr(section, field.name)
            if value < low or (high is not None and value > high):
                if high is not None:
                    bad(option, value, f"must be between {low} and {high}")
                elif low == 0:
                    bad(option, value, _ZERO_MEANS.get(option, "must be 0 or positive"))
                else:
                    bad(option, value, "must be at least 1")

    # Relations between options.
    # The Raft core states its own rules (RaftConfig.problems); report each under
    # its option name rather than check it a second time here.
    option_of = {core: f"raft.{option}" for option, core in RAFT_CORE_NAMES.items()}
    for problem in config.raft.options().problems():
        if problem.relation == "below":
            broken(option_of[problem.field], option_of[problem.other], strict=True)
        else:
            bad(option_of[problem.field], value_of(option_of[problem.field]), "must be at least 1")
    at_most("metadata.batch_max", "metadata.queue_max")
    at_most("network.reconnect_backoff_ms_min", "network.reconnect_backoff_ms_max")
    # A write is one frame, and one Raft entry (or one local-log record): if the
    # store refused it after the node accepted it, the node could not persist it.
    frame, record = config.network.frame_bytes_max, config.storage.record_bytes_max
    fits = min(frame, record)
    if md.value_bytes_max + md.key_bytes_max + 1024 > fits:
        limit = "network.frame_bytes_max" if frame <= record else "storage.record_bytes_max"
        culprit = at_fault("metadata.value_bytes_max", "metadata.key_bytes_max", limit)
        why = (
            f"a key and value must fit in one frame and one stored record: {limit} ({fits})"
            if culprit != limit
            else "must hold a key and a value of the largest size "
            f"(metadata.key_bytes_max {md.key_bytes_max} + "
            f"metadata.value_bytes_max {md.value_bytes_max} + 1024)"
        )
        bad(culprit, value_of(culprit), why)
    for side in ("peer", "client"):
        at_most(f"network.{side}_ping_interval_ms", f"network.{side}_idle_timeout_ms", strict=True)
    logs = config.logs
    if logs.provider not in ("replicated", "local"):
        bad("logs.provider", logs.provider, 'expected "replicated" or "local"')
    if logs.replication:
        try:
            ReplicationProperty.parse(logs.replication)
        except ReplicationError as exc:
            bad("logs.replication", logs.replication, str(exc))
    for limit in ("network.frame_bytes_max", "storage.record_bytes_max"):
        if logs.record_bytes_max + 1024 <= value_of(limit):
            continue
        culprit = at_fault("logs.record_bytes_max", limit)
        if any(problem.startswith(f"{culprit}:") for problem in problems):
            continue  # reported already, under the option that was set
        if culprit == limit:
            bad(limit, value_of(limit), "must hold a log record of logs.record_bytes_max + 1024")
        else:
            bad(culprit, logs.record_bytes_max, f"a log record must fit in {limit} - 1024")
    return problems


# Integer options whose range is not "at least 1": (lowest, highest or None).
_INT_RANGES: dict[str, tuple[int, int | None]] = {
    "raft.tick_ms": (1, 60_000),
    "join.timeout_ms": (0, None),
    "raft.lease_drift_ticks": (0, None),
    "raft.promote_lag_entries_max": (0, None),
    "network.peer_link_log_interval_ms": (0, None),
    "logs.count": (0, 1 << 32),
    "logs.nodeset_size": (0, None),
    "logs.sequencer_failover_ms": (0, None),
}
_ZERO_MEANS = {
    "join.timeout_ms": "must be 0 (no limit) or positive",
    "network.peer_link_log_interval_ms": "must be 0 (every line) or positive",
}


# ------------------------------------------------------------------ writing


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return msgspec.json.encode(value).decode()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(config: ServerConfig, *, only_changed: bool = False) -> str:
    """The configuration as TOML (every option, or those differing from the defaults)."""
    default = ServerConfig()
    top: list[str] = []
    sections: list[str] = []
    for field in msgspec.structs.fields(ServerConfig):
        value = getattr(config, field.name)
        if field.name in _SECTIONS:
            lines = []
            default_section = getattr(default, field.name)
            for sub in msgspec.structs.fields(type(value)):
                subvalue = getattr(value, sub.name)
                if only_changed and subvalue == getattr(default_section, sub.name):
                    continue
                lines.append(f"{sub.name} = {_toml_value(subvalue)}")
            if lines:
                sections.append(f"\n[{field.name}]\n" + "\n".join(lines) + "\n")
        else:
            if only_changed and value == getattr(default, field.name):
                continue
            if value is None:
                top.append(f"# {field.name} = (automatic)")
                continue
            top.append(f"{field.name} = {_toml_value(value)}")
    return "\n".join(top) + "\n" + "".join(sections)
