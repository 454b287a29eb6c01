"""Fuzzing the TLS parsers: only the contract's outcomes may happen.

As mitmproxy does for its ClientHello parser: take real hello bytes, cut
them at every offset, append random bytes, flip bytes, or feed pure noise.
A parser may return a result, ``None`` / "not yet", or raise ParseError;
``struct.error``, ``IndexError``, ``UnicodeDecodeError`` and friends would
fail the test. Samples come from the corpus when it is present, and from
hand-made hellos always, so this file never skips.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import CORPUS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_tls import (
    message,
    record,
    sample_client_hello,
    sample_server_hello,
    server_hello_body,
    sslv2_client_hello,
    tcp_directions,
)

from residency_monitor.fingerprint import ja3, ja3s, ja4
from residency_monitor.tls import (
    ClientHello,
    ParseError,
    ServerHello,
    looks_like_tls,
    parse_client_hello,
    parse_server_hello,
    parse_sslv2_client_hello,
    parse_sslv2_server_hello,
    read_handshake_messages,
    split_handshake,
)

FUZZ = settings(max_examples=1000, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
# Captures whose first bytes exercise split, PQ, HRR, SSLv2, draft and ECH hellos.
REAL_CAPTURES = (
    "ark-tls-split-client-hello.pcap",
    "zeek-chrome-1250-tls-x25519-kyber.pcap",
    "zeek-hrr.pcap",
    "zeek-ssl-v2.pcap",
    "sv-sslv2-tls-upgrade-01-ssl-v2-s1.pcap",
    "zeek-tls13draft23-chrome67.0.3368.0-canary.pcap",
    "zeek-tls13-ech.pcap",
    "ja4-tls-non-ascii-alpn.pcapng",
)
STREAM_PREFIX = 4096  # the parser only ever sees the first few KB of a flow


def _synthetic_streams() -> list[bytes]:
    ch = message(1, sample_client_hello())
    return [
        record(22, ch[:70]) + record(22, ch[70:]) + record(20, b"\x01"),
        record(22, message(2, sample_server_hello()) + message(11, b"\x00" * 3)) + record(23, b"x"),
        sslv2_client_hello(),
    ]


def _real_streams() -> list[bytes]:
    if not CORPUS.is_dir():
        return []
    out = []
    for name in REAL_CAPTURES:
        for direction in tcp_directions(CORPUS / name).values():
            if looks_like_tls(direction.data):
                out.append(direction.data[:STREAM_PREFIX])
    return out


STREAMS = _synthetic_streams() + _real_streams()


def _bodies(msg_type: int) -> list[bytes]:
    out = []
    for stream in STREAMS:
        out += [b for t, b in read_handshake_messages(stream)[0] if t == msg_type]
    return out


CLIENT_BODIES = _bodies(1)
SERVER_BODIES = _bodies(2) + [server_hello_body(None, version=0x0300)]


def contract(fn: Callable[[bytes], object], data: bytes) -> object:
    """Call a parser; ParseError is an allowed outcome (returned as None)."""
    try:
        return fn(data)
    except ParseError:
        return None


def check_client_hello(data: bytes) -> None:
    ch = contract(parse_client_hello, data)
    if ch is not None:
        assert isinstance(ch, ClientHello)
        ja3(ch)  # fingerprints must cope with whatever the parser accepts
        ja4(ch)
    contract(parse_sslv2_client_hello, data)


def check_server_hello(data: bytes) -> None:
    sh = contract(parse_server_hello, data)
    if sh is not None:
        assert isinstance(sh, ServerHello)
        ja3s(sh)
    contract(parse_sslv2_server_hello, data)


def check_stream(data: bytes) -> None:
    assert isinstance(looks_like_tls(data), bool)
    assert all(len(m) == 2 for m in split_handshake(data))
    try:
        msgs, done = read_handshake_messages(data)
    except ParseError:
        return
    assert isinstance(done, bool)
    for msg_type, body in msgs:
        if msg_type == 1:
            check_client_hello(body)
        elif msg_type == 2:
            check_server_hello(body)


def test_samples_are_real() -> None:
    assert CLIENT_BODIES and SERVER_BODIES
    if CORPUS.is_dir():
        assert len(CLIENT_BODIES) >= 8 and max(map(len, CLIENT_BODIES)) > 1500


@pytest.mark.parametrize("index", range(len(STREAMS)))
def test_stream_prefixes_give_a_prefix_of_the_messages(index: int) -> None:
    # Bytes arrive in order: a prefix of a stream must yield a prefix of its
    # messages and never an error, whatever the cut (records, TCP segments).
    stream = STREAMS[index]
    full, _ = read_handshake_messages(stream)
    for cut in range(len(stream) + 1):
        msgs, _ = read_handshake_messages(stream[:cut])
        assert msgs == full[:len(msgs)]


@pytest.mark.parametrize("index", range(len(CLIENT_BODIES)))
def test_truncated_client_hello_bodies(index: int) -> None:
    body = CLIENT_BODIES[index]
    for cut in range(len(body)):
        check_client_hello(body[:cut])


@pytest.mark.parametrize("index", range(len(SERVER_BODIES)))
def test_truncated_server_hello_bodies(index: int) -> None:
    body = SERVER_BODIES[index]
    for cut in range(len(body)):
        check_server_hello(body[:cut])


def _cut_and_append(samples: list[bytes]) -> st.SearchStrategy[bytes]:
    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        sample = draw(st.sampled_from(samples))
        cut = draw(st.integers(0, len(sample)))
        return sample[:cut] + draw(st.binary(max_size=64))

    return build()


def _flip_bytes(samples: list[bytes]) -> st.SearchStrategy[bytes]:
    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(samples)))
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)

    return build()


@FUZZ
@given(_cut_and_append(CLIENT_BODIES))
def test_client_hello_cut_and_appended(data: bytes) -> None:
    check_client_hello(data)


@FUZZ
@given(_flip_bytes(CLIENT_BODIES))
def test_client_hello_with_flipped_bytes(data: bytes) -> None:
    check_client_hello(data)


@FUZZ
@given(_cut_and_append(SERVER_BODIES) | _flip_bytes(SERVER_BODIES))
def test_server_hello_mangled(data: bytes) -> None:
    check_server_hello(data)


@FUZZ
@given(_cut_and_append(STREAMS) | _flip_bytes(STREAMS))
def test_stream_mangled(data: bytes) -> None:
    check_stream(data)


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes(data: bytes) -> None:
    check_client_hello(data)
    check_server_hello(data)
    check_stream(data)


@FUZZ
@given(st.sampled_from((20, 21, 22, 23)), st.binary(max_size=300))
def test_random_records(ctype: int, payload: bytes) -> None:
    # Valid record framing around noise reaches the handshake reassembly and the hello parsers.
    check_stream(record(ctype, payload))
    check_stream(record(22, message(1, payload)) + record(22, payload))
