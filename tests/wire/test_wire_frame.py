"""Frame codec: layout, limits, splitting, errors, typed payloads."""

from __future__ import annotations

import struct
import time

import msgspec
import pytest

from catenary.api.messages import Get, Put, Request
from catenary.core.raft.types import AppendEntries, Entry, Message, RequestVote
from catenary.wire import (
    HEADER_BYTES,
    Frame,
    FrameDecoder,
    FrameKind,
    FrameTooLarge,
    MalformedPayload,
    UnknownFrameKind,
    WireError,
    decode_payload,
    encode_frame,
    encode_message,
)

pytestmark = pytest.mark.timeout(30)

ENCODER = msgspec.msgpack.Encoder()
MESSAGE_DECODER: msgspec.msgpack.Decoder[Message] = msgspec.msgpack.Decoder(Message)
REQUEST_DECODER: msgspec.msgpack.Decoder[Request] = msgspec.msgpack.Decoder(Request)


def test_layout_is_length_kind_payload() -> None:
    assert encode_frame(FrameKind.PEER, b"abc") == b"\x00\x00\x00\x03\x10abc"
    assert encode_frame(FrameKind.REPLY, b"") == b"\x00\x00\x00\x00\x21"
    assert HEADER_BYTES == 5


def test_round_trip_every_kind_in_one_feed() -> None:
    frames = [Frame(int(kind), bytes([int(kind)]) * int(kind)) for kind in FrameKind]
    stream = b"".join(encode_frame(f.kind, f.payload) for f in frames)
    assert FrameDecoder().feed(stream) == frames


def test_split_at_every_byte_boundary() -> None:
    frames = [Frame(FrameKind.PEER, b"x" * n) for n in (0, 1, 7, 300)]
    stream = b"".join(encode_frame(f.kind, f.payload) for f in frames)
    for cut in range(len(stream) + 1):
        decoder = FrameDecoder()
        got = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert got == frames, cut
        assert decoder.buffered_bytes == 0
    decoder = FrameDecoder()
    got = []
    for i in range(len(stream)):
        got += decoder.feed(stream[i : i + 1])
    assert got == frames


def test_feed_accepts_memoryview_and_bytearray() -> None:
    stream = encode_frame(FrameKind.REQUEST, b"hello") * 2
    decoder = FrameDecoder()
    assert decoder.feed(memoryview(stream)[:7]) == []
    assert decoder.feed(bytearray(stream[7:])) == [Frame(FrameKind.REQUEST, b"hello")] * 2


def test_oversized_length_refused_from_the_header_alone() -> None:
    decoder = FrameDecoder(frame_bytes_max=100)
    assert decoder.feed(encode_frame(FrameKind.PEER, b"a" * 95)) == [
        Frame(FrameKind.PEER, b"a" * 95)
    ]
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(struct.pack(">IB", 96, FrameKind.PEER))  # no body sent at all
    assert info.value.frame_bytes == 101
    assert info.value.frame_bytes_max == 100


def test_decoder_is_dead_after_an_error() -> None:
    decoder = FrameDecoder()
    with pytest.raises(UnknownFrameKind) as info:
        decoder.feed(b"\x00\x00\x00\x01\x63z")
    assert info.value.kind == 0x63
    with pytest.raises(UnknownFrameKind):
        decoder.feed(encode_frame(FrameKind.PEER, b"fine"))
    assert decoder.failed
    assert decoder.buffered_bytes == 0


def test_frames_before_an_error_are_not_returned_but_error_is_raised() -> None:
    # A stream that is wrong anywhere is wrong: the caller drops the connection.
    decoder = FrameDecoder()
    with pytest.raises(WireError):
        decoder.feed(encode_frame(FrameKind.PEER, b"ok") + b"\xff\xff\xff\xff\x10")


def test_first_frame_has_its_own_limit() -> None:
    decoder = FrameDecoder(frame_bytes_max=1000, first_frame_bytes_max=20)
    hello = encode_frame(FrameKind.HELLO, b"h" * 15)
    big = encode_frame(FrameKind.PEER, b"p" * 500)
    assert decoder.feed(hello + big) == [
        Frame(FrameKind.HELLO, b"h" * 15),
        Frame(FrameKind.PEER, b"p" * 500),
    ]
    with pytest.raises(FrameTooLarge):
        FrameDecoder(frame_bytes_max=1000, first_frame_bytes_max=20).feed(big)


def test_limit_bounds_are_checked() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(frame_bytes_max=4)
    with pytest.raises(ValueError):
        FrameDecoder(first_frame_bytes_max=(1 << 40))
    with pytest.raises(ValueError):
        FrameDecoder().set_frame_bytes_max(0)


def test_encoder_refuses_what_the_receiver_would_refuse() -> None:
    with pytest.raises(FrameTooLarge):
        encode_frame(FrameKind.PEER, b"x" * 96, frame_bytes_max=100)
    assert len(encode_frame(FrameKind.PEER, b"x" * 95, frame_bytes_max=100)) == 100
    with pytest.raises(UnknownFrameKind):
        encode_frame(200, b"")
    with pytest.raises(FrameTooLarge):
        encode_message(FrameKind.PEER, b"x" * 200, ENCODER, frame_bytes_max=100)
    with pytest.raises(UnknownFrameKind):
        encode_message(0, 1, ENCODER)


def test_typed_raft_messages_round_trip() -> None:
    messages: list[Message] = [
        RequestVote(1, 2, 5, 10, 4, pre_vote=True),
        AppendEntries(1, 3, 5, 9, 4, (Entry(5, 10, 0, b"cmd"), Entry(5, 11, 2, b"")), 9),
    ]
    stream = b"".join(encode_message(FrameKind.PEER, m, ENCODER) for m in messages)
    for m, raw in zip(messages, [ENCODER.encode(m) for m in messages]):
        assert encode_message(FrameKind.PEER, m, ENCODER) == encode_frame(FrameKind.PEER, raw)
    frames = FrameDecoder().feed(stream)
    assert [decode_payload(f, MESSAGE_DECODER) for f in frames] == messages


def test_typed_client_requests_round_trip() -> None:
    requests: list[Request] = [Get(1, "a"), Put(2, "k", b"v")]
    frames = FrameDecoder().feed(
        b"".join(encode_message(FrameKind.REQUEST, r, ENCODER) for r in requests)
    )
    assert [decode_payload(f, REQUEST_DECODER) for f in frames] == requests


@pytest.mark.parametrize(
    "payload",
    [
        b"",  # nothing
        b"\xc1",  # a msgpack byte that is never valid
        ENCODER.encode(["zz", 1, 2]),  # unknown tag
        ENCODER.encode(["rv", 1]),  # too few fields
        ENCODER.encode(["rv", "a", 2, 3, 4, 5]),  # wrong field type
        ENCODER.encode(Get(1, "a")),  # a client request on a peer frame
        b"\x91" * 5000 + b"\xc0",  # deep nesting
    ],
)
def test_malformed_payload_is_a_wire_error(payload: bytes) -> None:
    frame = Frame(FrameKind.PEER, payload)
    with pytest.raises(MalformedPayload) as info:
        decode_payload(frame, MESSAGE_DECODER)
    assert info.value.kind == FrameKind.PEER


def test_large_frame_in_small_chunks_is_linear() -> None:
    # A decoder that re-copied its growing buffer on every feed would move
    # ~8 GiB here (8192 feeds x ~1 MiB): far beyond the bound.  Linear work
    # is ~2 MiB of copying and finishes in well under a second.
    payload = bytes(range(256)) * (8 << 10)  # 2 MiB
    stream = encode_frame(FrameKind.PEER, payload)
    decoder = FrameDecoder()
    started = time.perf_counter()
    got: list[Frame] = []
    for i in range(0, len(stream), 256):
        got += decoder.feed(stream[i : i + 256])
    elapsed = time.perf_counter() - started
    assert got == [Frame(FrameKind.PEER, payload)]
    assert elapsed < 5.0, elapsed
