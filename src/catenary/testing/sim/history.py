"""The clients' history: every invocation and its response, as the checkers see it.

An operation is recorded when a client invokes it and closed when the client
learns its outcome:

* ``ok``: the response arrived; ``result`` holds it (a ``KeyValue | None`` for a
  get, a ``Result`` for a put or delete);
* ``indeterminate``: a write whose outcome is unknown (timeout, reply lost,
  leader lost).  It may or may not have taken effect; ``return_us`` is None;
* ``failed``: definitely without effect (every attempt was refused, or a read
  timed out).  Failed operations are left out of the linearizability check.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from catenary.core.metadata.types import Command, KeyValue, Precondition, Result


@dataclass
class Op:
    op_id: int
    client: int
    kind: str  # "get" | "put" | "delete" | "lease" (grant, keep-alive, revoke)
    key: str
    call_us: int
    value: bytes = b""
    precondition: Precondition = field(default_factory=Precondition)
    return_us: int | None = None
    status: str = "pending"  # "pending" | "ok" | "indeterminate" | "failed"
    stale: bool = False  # a get answered from any member's applied state
    command: Command | None = None  # set for lease operations (kind "lease") and leased puts
    checked: bool = True  # False: outside the linearizability check (lease keys expire)
    probe: bool = False  # a put on a lease its client abandoned (must fail once it ran out)
    read_result: KeyValue | None = None
    write_result: Result | None = None

    @property
    def is_write(self) -> bool:
        return self.kind != "get"

    def describe(self) -> str:
        args = self.key
        if self.kind == "put":
            args += f"={self.value!r}"
        if self.precondition.kind != "none":
            args += f" if {self.precondition.kind}"
            if self.precondition.kind == "version":
                args += f"=={self.precondition.version}"
        outcome = self.status
        if self.status == "ok":
            outcome = repr(self.read_result if self.kind == "get" else self.write_result)
        end = "?" if self.return_us is None else str(self.return_us)
        kind = "stale-get" if self.stale else self.kind
        if self.kind == "lease" and self.command is not None:
            kind, args = type(self.command).__name__, repr(self.command)
        return f"#{self.op_id} c{self.client} {kind}({args}) [{self.call_us},{end}] -> {outcome}"
