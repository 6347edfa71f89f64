"""Fuzzing the frame decoder and the typed payload decoders with hypothesis.

The property everywhere: a decoder fed any bytes, split anywhere, either
returns frames that re-encode to exactly the bytes it consumed (and holds the
rest, less than one frame, in its buffer) or raises a ``WireError``.  It never
raises anything else and never hangs (each example is bounded by the test
timeout; the decoder's work is linear in its input).

Examples are derandomized so the suite is reproducible; raise the count with
``CATENARY_FUZZ_EXAMPLES=5000`` for a longer hunt.
"""

from __future__ import annotations

import os
import struct

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from catenary.api.messages import Get, Put, Request, Watch, reply_decoder, request_encoder
from catenary.core.raft.types import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    Message,
    RequestVote,
    TimeoutNow,
)
from catenary.wire import (
    HEADER_BYTES,
    KNOWN_FRAME_KINDS,
    Frame,
    FrameDecoder,
    FrameKind,
    MalformedPayload,
    WireError,
    decode_handshake,
    decode_payload,
    encode_frame,
    encode_message,
)

pytestmark = pytest.mark.timeout(90)

EXAMPLES = int(os.environ.get("CATENARY_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

LIMIT = 512  # small, so length mutations often cross it
ENCODER = msgspec.msgpack.Encoder()
MESSAGE_DECODER: msgspec.msgpack.Decoder[Message] = msgspec.msgpack.Decoder(Message)
REQUEST_DECODER: msgspec.msgpack.Decoder[Request] = msgspec.msgpack.Decoder(Request)

kinds = st.sampled_from(sorted(KNOWN_FRAME_KINDS))
frames_st = st.lists(st.builds(Frame, kinds, st.binary(max_size=LIMIT - HEADER_BYTES)), max_size=8)
u64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
entries = st.lists(
    st.builds(Entry, u64, u64, st.integers(0, 2), st.binary(max_size=40)), max_size=4
).map(tuple)
messages_st: st.SearchStrategy[Message] = st.one_of(
    st.builds(RequestVote, u64, u64, u64, u64, u64, st.booleans(), st.booleans()),
    st.builds(AppendEntries, u64, u64, u64, u64, u64, entries, u64, u64),
    st.builds(AppendEntriesResponse, u64, u64, u64, st.booleans(), u64, u64, u64, u64),
    st.builds(TimeoutNow, u64, u64, u64),
)
requests_st: st.SearchStrategy[Request] = st.one_of(
    st.builds(Get, u64, st.text(max_size=20), st.booleans()),
    st.builds(Put, u64, st.text(max_size=20), st.binary(max_size=40)),
    st.builds(Watch, u64, st.text(max_size=20), st.booleans(), u64),
)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, last = [], 0
    for p in [*points, len(data)]:
        chunks.append(data[last:p])
        last = p
    return chunks


def _decode_checked(stream: bytes, cuts: list[int]) -> list[Frame] | WireError:
    """Feed ``stream`` in pieces; check the consumed-prefix property; return frames or the error."""
    decoder = FrameDecoder(frame_bytes_max=LIMIT)
    frames: list[Frame] = []
    try:
        for chunk in _split(stream, cuts):
            frames += decoder.feed(chunk)
    except WireError as exc:
        with pytest.raises(WireError):  # and the decoder stays dead
            decoder.feed(b"")
        return exc
    consumed = b"".join(encode_frame(f.kind, f.payload, LIMIT) for f in frames)
    assert stream.startswith(consumed)
    assert decoder.buffered_bytes == len(stream) - len(consumed)
    assert decoder.buffered_bytes < LIMIT
    return frames


def _decode_typed(frame: Frame) -> object:
    """Decode a frame's payload by its kind; only MalformedPayload may escape."""
    try:
        if frame.kind == FrameKind.PEER:
            return decode_payload(frame, MESSAGE_DECODER)
        if frame.kind == FrameKind.REQUEST:
            return decode_payload(frame, REQUEST_DECODER)
        if frame.kind == FrameKind.REPLY:
            return decode_payload(frame, reply_decoder)
        if frame.kind in (FrameKind.PING, FrameKind.PONG):
            return frame.payload  # opaque (catenary.wire.liveness)
        return decode_handshake(frame.kind, frame.payload)
    except WireError as exc:
        assert isinstance(exc, MalformedPayload), exc
        return exc


@FUZZ
@given(frames_st, st.lists(st.integers(min_value=0), max_size=10))
def test_random_frames_round_trip_split_anywhere(frames: list[Frame], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(f.kind, f.payload, LIMIT) for f in frames)
    assert _decode_checked(stream, cuts) == frames


@FUZZ
@given(st.binary(max_size=2048), st.lists(st.integers(min_value=0), max_size=10))
def test_random_bytes_decode_or_raise_wire_error(data: bytes, cuts: list[int]) -> None:
    result = _decode_checked(data, cuts)
    if not isinstance(result, WireError):
        for frame in result:
            _decode_typed(frame)


@st.composite
def mutated_streams(draw: st.DrawFn) -> tuple[list[Frame], bytes, str]:
    frames = draw(frames_st.filter(bool))
    stream = bytearray(b"".join(encode_frame(f.kind, f.payload, LIMIT) for f in frames))
    how = draw(st.sampled_from(["truncate", "flip", "splice", "oversize", "kind"]))
    at = draw(st.integers(0, len(stream) - 1))
    if how == "truncate":
        del stream[at:]
    elif how == "flip":
        stream[at] ^= draw(st.integers(1, 255))
    elif how == "splice":
        stream[at:at] = draw(st.binary(min_size=1, max_size=64))
    else:
        # Aim at a real header: the start of one of the frames.
        starts, pos = [], 0
        for f in frames:
            starts.append(pos)
            pos += HEADER_BYTES + len(f.payload)
        start = starts[draw(st.integers(0, len(starts) - 1))]
        if how == "oversize":
            struct.pack_into(
                ">I", stream, start, draw(st.integers(LIMIT - HEADER_BYTES + 1, (1 << 32) - 1))
            )
        else:
            bad = draw(st.integers(0, 255).filter(lambda k: k not in KNOWN_FRAME_KINDS))
            stream[start + 4] = bad
    return frames, bytes(stream), how


@FUZZ
@given(mutated_streams(), st.lists(st.integers(min_value=0), max_size=10))
def test_mutated_streams_decode_consistently_or_raise(
    case: tuple[list[Frame], bytes, str], cuts: list[int]
) -> None:
    frames, stream, how = case
    result = _decode_checked(stream, cuts)
    if how == "truncate":
        # A cut stream yields a prefix of the original frames, never an error.
        assert not isinstance(result, WireError)
        assert result == frames[: len(result)]
    elif how in ("oversize", "kind"):
        assert isinstance(result, WireError)
    elif not isinstance(result, WireError):
        for frame in result:
            _decode_typed(frame)


@FUZZ
@given(
    st.lists(messages_st, min_size=1, max_size=5), st.lists(st.integers(min_value=0), max_size=6)
)
def test_raft_messages_round_trip(messages: list[Message], cuts: list[int]) -> None:
    stream = b"".join(encode_message(FrameKind.PEER, m, ENCODER, 1 << 20) for m in messages)
    decoder = FrameDecoder()
    got: list[Frame] = []
    for chunk in _split(stream, cuts):
        got += decoder.feed(chunk)
    assert [decode_payload(f, MESSAGE_DECODER) for f in got] == messages


@FUZZ
@given(
    st.one_of(messages_st.map(ENCODER.encode), requests_st.map(request_encoder.encode)),
    st.integers(min_value=0),
    st.integers(1, 255),
    st.integers(min_value=0),
    st.sampled_from([FrameKind.PEER, FrameKind.REQUEST, FrameKind.HELLO, FrameKind.HELLO_ACK]),
)
def test_mutated_payloads_decode_or_raise_malformed(
    payload: bytes, at: int, mask: int, cut: int, kind: FrameKind
) -> None:
    data = bytearray(payload)
    data[at % len(data)] ^= mask
    for candidate in (bytes(data), bytes(data[: cut % (len(data) + 1)]), payload):
        _decode_typed(Frame(kind, candidate))
