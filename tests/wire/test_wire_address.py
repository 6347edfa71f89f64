"""The one address parser: what it accepts, what it refuses and why."""

from __future__ import annotations

import pytest

from catenary.wire.address import AddressError, parse_address


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("127.0.0.1:80", ("127.0.0.1", 80)),
        ("localhost:5123", ("localhost", 5123)),
        ("[::1]:7000", ("::1", 7000)),
        ("[fe80::1%eth0]:1", ("fe80::1%eth0", 1)),
        ("h:65535", ("h", 65535)),
    ],
)
def test_accepts_host_port_and_bracketed_ipv6(text: str, parsed: tuple[str, int]) -> None:
    assert parse_address(text) == parsed


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("nohost", "expected host:port"),
        (":80", "expected host:port"),
        ("h:", "the port must be a number"),
        ("h:x", "the port must be a number"),
        ("h:-1", "the port must be a number"),
        ("h:٣", "the port must be a number"),
        ("h:0", "the port must be between 1 and 65535"),
        ("h:70000", "the port must be between 1 and 65535"),
        ("::1:80", "an IPv6 host must be in brackets: [host]:port"),
        ("[::1:80", "expected [ipv6]:port"),
        ("[]:80", "expected [ipv6]:port"),
        ("[::1]]:80", "expected [ipv6]:port"),
        ("h]:80", "expected host:port"),
        (" h:80", "the host must not contain whitespace"),
        ("h:80 ", "the port must be a number"),
    ],
)
def test_refuses_with_a_reason_naming_the_address(text: str, reason: str) -> None:
    with pytest.raises(AddressError) as caught:
        parse_address(text)
    assert caught.value.reason == reason
    assert str(caught.value) == f"bad address {text!r}: {reason}"
    assert isinstance(caught.value, ValueError)


def test_server_client_and_transport_share_the_parser() -> None:
    from catenary.client import connection

    # The client wraps the one parser so that a bad address is a CatenaryError.
    from catenary.client.errors import BadRequestError
    from catenary.runtime import transport
    from catenary.server import config

    for good in ("h:1", "[::1]:80", "10.0.0.1:65535"):
        assert connection.parse_address(good) == parse_address(good)
    for bad in ("::1:80", " h:1", "h:0", "h"):
        with pytest.raises(BadRequestError) as caught:
            connection.parse_address(bad)
        with pytest.raises(ValueError) as shared:
            parse_address(bad)
        assert str(caught.value) == str(shared.value)
    assert transport.parse_address is parse_address
    assert config.parse_address is parse_address
