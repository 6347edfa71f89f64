"""Network namespaces for real-process fault runs: each node behind its own veth.

Theory of operation
-------------------
1. Layout.  One Linux bridge in the root namespace holds ``10.213.X.1/24``
   (X: the first /24 of 10.213.0.0/16 no interface on this machine uses yet,
   chosen under a lock file so two harnesses never pick the same one).  Node
   ``i`` runs in namespace ``<prefix>n<i>`` whose ``eth0`` (``10.213.X.(10+i)``)
   is one end of a veth pair; the other end, ``<prefix>v<i>``, is a port of the
   bridge.  The test process reaches every node through the bridge address;
   nodes reach each other through the bridge.  Nothing else is routed.
2. Cuts.  Each root-side veth carries an ``htb`` root qdisc with two classes:
   ``1:1`` (the default, passes everything) and ``1:2``, whose leaf is a
   ``pfifo`` of limit 0 (drops everything).  Cutting ``src -> dst`` adds a
   ``u32`` filter on ``dst``'s veth sending packets whose IP source is ``src``
   into ``1:2``: they are dropped on the wire, in the kernel, before ``dst``'s
   namespace sees them.  A cut both ways is two filters; healing deletes them.
   (``tc`` actions such as ``drop`` need kernel modules this machine may not
   have; classification into a zero-length queue needs none.)  ``isolate``
   takes a node's link down instead: not even the test process reaches it.
3. Names.  Everything created is named ``cf<pid in hex>...`` (pid of the
   harness process), so ``cleanup_stale`` can remove what a harness that died
   without cleaning up left behind, and never touches a live one's.
4. Teardown.  ``close`` removes the namespaces (which removes their veths),
   the root-side veths and the bridge; it is registered with ``atexit`` and
   safe to call twice.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import re
import shutil
import subprocess
from pathlib import Path

_LOCK = Path("/tmp/catenary-faults-net.lock")
_NAME = re.compile(r"^cf([0-9a-f]{1,7})(?:br|n\d+|v\d+)$")


class NetworkUnavailable(Exception):
    """Namespaces cannot be made here (the message says why)."""


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=20)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip() or result.returncode}")
    return result


def unavailable_reason() -> str | None:
    """Why namespaces cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "not root: network namespaces need CAP_NET_ADMIN"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"{tool!r} is not installed"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale() -> list[str]:
    """Remove namespaces and links of harness processes that no longer exist."""
    removed: list[str] = []
    namespaces = _run("ip", "netns", "list", check=False).stdout.split()
    links = re.findall(r"^\d+: ([^:@\s]+)", _run("ip", "-o", "link", check=False).stdout, re.M)
    for name in namespaces:
        match = _NAME.match(name)
        if match and not _alive(int(match.group(1), 16)):
            _run("ip", "netns", "del", name, check=False)
            removed.append(name)
    for name in links:
        match = _NAME.match(name)
        if match and not _alive(int(match.group(1), 16)):
            _run("ip", "link", "del", name, check=False)
            removed.append(name)
    return removed


class Network:
    """A bridge, one namespace per node, and cuts between them (see the module doc)."""

    def __init__(self, nodes: int) -> None:
        reason = unavailable_reason()
        if reason is not None:
            raise NetworkUnavailable(reason)
        self.nodes = nodes
        self.prefix = f"cf{os.getpid():x}"
        self.bridge = f"{self.prefix}br"
        self.subnet = -1
        self.cuts: set[tuple[int, int]] = set()
        self.down: set[int] = set()
        self._made_namespaces: list[str] = []
        self._made_links: list[str] = []
        self._closed = False
        atexit.register(self.close)
        try:
            self._setup()
        except Exception as exc:
            self.close()
            raise NetworkUnavailable(f"could not set up namespaces: {exc}") from exc

    # ----------------------------------------------------------- names

    def namespace(self, node: int) -> str:
        return f"{self.prefix}n{node}"

    def veth(self, node: int) -> str:
        return f"{self.prefix}v{node}"

    def ip(self, node: int) -> str:
        return f"10.213.{self.subnet}.{10 + node}"

    @property
    def gateway(self) -> str:
        return f"10.213.{self.subnet}.1"

    def exec_prefix(self, node: int) -> list[str]:
        """Prepend to a command to run it inside the node's namespace."""
        return ["ip", "netns", "exec", self.namespace(node)]

    # ----------------------------------------------------------- setup

    def _setup(self) -> None:
        cleanup_stale()
        _LOCK.touch(exist_ok=True)
        with _LOCK.open("r") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            used = set(
                int(x)
                for x in re.findall(r"inet 10\.213\.(\d+)\.", _run("ip", "-4", "addr").stdout)
            )
            free = [x for x in range(256) if x not in used]
            if not free:
                raise NetworkUnavailable("every 10.213.X.0/24 is in use")
            self.subnet = free[0]
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            self._made_links.append(self.bridge)
            _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
        for node in range(1, self.nodes + 1):
            ns, veth = self.namespace(node), self.veth(node)
            _run("ip", "netns", "add", ns)
            self._made_namespaces.append(ns)
            _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            self._made_links.append(veth)
            _run("ip", "link", "set", veth, "master", self.bridge)
            _run("ip", "link", "set", veth, "up")
            inside = self.exec_prefix(node)
            _run(*inside, "ip", "link", "set", "lo", "up")
            _run(*inside, "ip", "addr", "add", f"{self.ip(node)}/24", "dev", "eth0")
            _run(*inside, "ip", "link", "set", "eth0", "up")
            # Pass-through class 1:1 (default) and a dropping class 1:2.
            _run("tc", "qdisc", "add", "dev", veth, "root", "handle", "1:", "htb", "default", "1")
            for cls in ("1:1", "1:2"):
                _run(
                    "tc", "class", "add", "dev", veth, "parent", "1:", "classid", cls,
                    "htb", "rate", "10gbit",
                )  # fmt: skip
            _run("tc", "qdisc", "add", "dev", veth, "parent", "1:2", "handle", "2:", "pfifo",
                 "limit", "0")  # fmt: skip

    # ------------------------------------------------------------ cuts

    def cut(self, src: int, dst: int) -> None:
        """Drop every packet from ``src`` to ``dst`` (one way)."""
        if (src, dst) in self.cuts:
            return
        _run(
            "tc", "filter", "add", "dev", self.veth(dst), "parent", "1:", "protocol", "ip",
            "pref", str(100 + src), "u32", "match", "ip", "src", f"{self.ip(src)}/32",
            "flowid", "1:2",
        )  # fmt: skip
        self.cuts.add((src, dst))

    def uncut(self, src: int, dst: int) -> None:
        if (src, dst) not in self.cuts:
            return
        _run("tc", "filter", "del", "dev", self.veth(dst), "parent", "1:", "pref",
             str(100 + src), check=False)  # fmt: skip
        self.cuts.discard((src, dst))

    def split(self, groups: list[list[int]]) -> None:
        """Cut every pair of nodes in different groups, both ways."""
        for a in groups:
            for b in groups:
                if a is b:
                    continue
                for src in a:
                    for dst in b:
                        self.cut(src, dst)

    def isolate(self, node: int) -> None:
        """Take the node's link down: no peer and no client reaches it."""
        _run("ip", "link", "set", self.veth(node), "down")
        self.down.add(node)

    def heal(self) -> None:
        for src, dst in list(self.cuts):
            self.uncut(src, dst)
        for node in list(self.down):
            _run("ip", "link", "set", self.veth(node), "up", check=False)
            self.down.discard(node)

    def describe(self) -> str:
        return (
            f"namespaces {self.namespace(1)}..{self.namespace(self.nodes)}, "
            f"bridge {self.bridge} {self.gateway}/24"
        )

    # -------------------------------------------------------- teardown

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for ns in reversed(self._made_namespaces):
            _run("ip", "netns", "del", ns, check=False)
        for link in reversed(self._made_links):
            with contextlib.suppress(Exception):
                if _run("ip", "link", "show", link, check=False).returncode == 0:
                    _run("ip", "link", "del", link, check=False)
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
