"""Network addresses as written in configuration, flags and node records.

Rules:

1. An address is ``host:port`` or, for an IPv6 literal, ``[host]:port``.  A
   bare IPv6 literal (``::1:80``) is refused: which colon starts the port would
   be a guess.
2. The host is not empty and holds no whitespace, brackets or (outside the
   brackets) colons; it is not resolved here.
3. The port is decimal digits only, 1 to 65535 (0 would mean "any port").
4. Nothing is trimmed: ``" h:1"`` is refused, so what is stored is what was
   checked.  Callers that split lists trim the parts themselves.
5. A refusal is an ``AddressError`` (a ``ValueError``): ``reason`` says what
   is wrong, ``str()`` names the address too.

This is the one parser: the server, the client, the CLI and the peer
transport all use it, so an address one accepts the others accept.
"""

from __future__ import annotations

PORT_MAX = 65535


class AddressError(ValueError):
    """An address that is not ``host:port``; ``reason`` without the address."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"bad address {address!r}: {reason}")
        self.address = address
        self.reason = reason


def parse_address(address: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` -> (host, port); AddressError otherwise."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host:
        raise AddressError(address, "expected host:port")
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            raise AddressError(address, "expected [ipv6]:port")
        host = host[1:-1]
        if "[" in host or "]" in host:
            raise AddressError(address, "expected [ipv6]:port")
    elif ":" in host:
        raise AddressError(address, "an IPv6 host must be in brackets: [host]:port")
    elif "[" in host or "]" in host:
        raise AddressError(address, "expected host:port")
    if any(ch.isspace() for ch in host):
        raise AddressError(address, "the host must not contain whitespace")
    if not port_text.isascii() or not port_text.isdigit():
        raise AddressError(address, "the port must be a number")
    port = int(port_text)
    if not 1 <= port <= PORT_MAX:
        raise AddressError(address, f"the port must be between 1 and {PORT_MAX}")
    return host, port
